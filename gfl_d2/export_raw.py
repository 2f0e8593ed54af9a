"""
ONNX exports of GFL's per-location outputs before any selection, with a
dynamic batch, height and width, checked in ONNX Runtime against the eager
model at batch 1 and 4 and at another size:

- ``raw`` (:mod:`gfl_d2.raw_outputs`): ``model_raw.onnx``, one output ``raw``
  (N, P, C + 4 (n + 1)), decoded by :func:`gfl_d2.edge_decoder.decode`;
- ``decoded`` (:mod:`gfl_d2.decoded_outputs`): ``model_decoded.onnx``, outputs
  ``boxes`` (N, P, 4) and ``scores`` (N, P, C), selected by
  :func:`gfl_d2.edge_decoder.select`.

The layout a decoder needs is written beside it (``<outputs>_layout.json``),
and the input normalisation's division is folded into the first convolution
(:func:`gfl_d2.onnx_graph.fold_input_scale`).
"""

import json
import os
from typing import Dict, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from .decoded_outputs import DecodedOutputs
from .errors import ExportMismatchError, UsageError
from .raw_outputs import RawOutputs

__all__ = ["export_raw_onnx", "export_dense_onnx", "DENSE_OUTPUTS", "dense_tolerance"]

# outputs -> (the wrapper, its output names)
DENSE_OUTPUTS = {"raw": (RawOutputs, ["raw"]), "decoded": (DecodedOutputs, ["boxes", "scores"])}


def dense_tolerance(name: str, want: np.ndarray) -> np.ndarray:
    """
    How far ONNX Runtime's ``name`` output may be from the eager one, element
    by element. Its kernels sum in other orders (blocked convolutions) through
    some 60 layers: the logits differ by ~1e-5 of their largest magnitude
    (measured 7-8e-6 on NanoDet-Plus with random He-scaled weights), allowed
    2e-5 of it plus 1e-4 of each value; probabilities move by at most a
    quarter of that (the sigmoid's slope). A box edge is the expected bin times
    the stride, so it moves by up to n·Δ·stride times its logits' error: boxes
    get 2e-4 of their largest coordinate, plus 1e-3 px.
    """
    scale = float(np.abs(want).max(initial=0.0))
    if name == "boxes":
        return np.full_like(want, 1e-3 + 2e-4 * scale)
    return 1e-4 + 2e-5 * scale + 1e-4 * np.abs(want)


def _padded(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """(3, H, W) zero-padded at the bottom and right to multiples of ``divisor``."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, -w % divisor, 0, -h % divisor))


def _check(session, wrapper, names, batch: torch.Tensor) -> Dict:
    with torch.no_grad():
        want = wrapper(batch)
    want = [w.cpu().numpy() for w in (want if isinstance(want, tuple) else (want,))]
    got = session.run(names, {"images": batch.cpu().numpy()})
    report = dict(batch=int(batch.shape[0]), size=list(batch.shape[-2:]), ok=True)
    for name, g, w in zip(names, got, want):
        if g.shape != w.shape:
            raise ExportMismatchError(f"{name} of shape {g.shape}, eager {w.shape}")
        diff = np.abs(g - w)
        report[f"max_{name}_diff"] = float(diff.max(initial=0.0))
        report["ok"] &= bool((diff <= dense_tolerance(name, w)).all())
    if not report["ok"]:
        raise ExportMismatchError(f"the exported outputs disagree with the eager model: {report}")
    return report


def _check_batches(session, wrapper, names, image: torch.Tensor, divisor: int):
    """The export against the eager ``wrapper``: ``image`` alone, a batch of 4, another size."""
    other = _padded(F.interpolate(image[None], scale_factor=0.75, mode="bilinear")[0], divisor)
    g = torch.Generator().manual_seed(0)
    noisy = [(image + 20 * torch.randn(image.shape, generator=g).to(image)).clamp(0, 255)
             for _ in range(3)]  # fmt: skip
    batches = (image[None], torch.stack([image] + noisy), other[None])
    return [_check(session, wrapper, names, b) for b in batches]


def export_dense_onnx(
    model, image: torch.Tensor, output: str, outputs: str = "raw", opset: int = 17
) -> Tuple[str, Dict]:
    """
    Export ``model``'s per-location ``outputs`` ("raw" or "decoded", see the
    module docstring) to ``output``/model_<outputs>.onnx (input ``images``
    (N, 3, H, W); N, H, W dynamic), check it at batch 1 and 4 and another
    size, write ``<outputs>_layout.json`` and ``export_check.json``.

    Args:
        image: (3, H, W) a sample in the model's input format, 0-255.

    Returns:
        (path of the ONNX model, the check's report)
    """
    import onnxruntime

    from .onnx_graph import fold_input_scale

    if outputs not in DENSE_OUTPUTS:
        raise UsageError(f"outputs must be one of {sorted(DENSE_OUTPUTS)}, got {outputs!r}")
    wrapper_type, names = DENSE_OUTPUTS[outputs]
    wrapper = wrapper_type(model).eval()
    layout = wrapper.layout
    image = _padded(image, layout["size_divisibility"])
    path = os.path.join(output, f"model_{outputs}.onnx")
    os.makedirs(output, exist_ok=True)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({name: {0: "batch", 1: "locations"} for name in names})
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (image[None].expand(2, -1, -1, -1).contiguous(),), path,
            opset_version=opset, dynamo=False, input_names=["images"], output_names=names,
            dynamic_axes=dynamic,
        )  # fmt: skip
    folded = fold_input_scale(path)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    checks = _check_batches(session, wrapper, names, image, layout["size_divisibility"])
    with open(os.path.join(output, f"{outputs}_layout.json"), "w") as f:
        json.dump(layout, f, indent=2)
    report = dict(outputs=outputs, names=names, checks=checks, layout=layout, opset=opset)
    report["folded_input_scale"] = folded
    with open(os.path.join(output, "export_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    return path, report


def export_raw_onnx(model, image: torch.Tensor, output: str, opset: int = 17) -> Tuple[str, Dict]:
    """:func:`export_dense_onnx` of the raw outputs: ``model_raw.onnx`` and ``raw_layout.json``."""
    return export_dense_onnx(model, image, output, "raw", opset)
