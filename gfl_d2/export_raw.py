"""
ONNX export of GFL's raw per-location outputs (:mod:`gfl_d2.raw_outputs`)
with a dynamic batch, height and width, checked in ONNX Runtime against the
eager model at batch 1 and 4; the layout a decoder needs is written beside it
(``raw_layout.json``, read by :func:`gfl_d2.edge_decoder.decode`).
"""

import json
import os
from typing import Dict, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from .errors import ExportMismatchError
from .raw_outputs import RawOutputs

__all__ = ["export_raw_onnx", "RAW_TOL"]

# scores are probabilities, bins logits of order 10: float32 rounding through a deep
# network, a few 1e-6 relative, with a margin
RAW_TOL = dict(rtol=1e-4, atol=1e-4)


def _padded(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """(3, H, W) zero-padded at the bottom and right to multiples of ``divisor``."""
    h, w = image.shape[-2:]
    return F.pad(image, (0, -w % divisor, 0, -h % divisor))


def _check(session, raw_model, batch: torch.Tensor) -> Dict:
    with torch.no_grad():
        want = raw_model(batch).cpu().numpy()
    got = session.run(None, {"images": batch.cpu().numpy()})[0]
    if got.shape != want.shape:
        raise ExportMismatchError(f"raw outputs of shape {got.shape}, eager {want.shape}")
    diff = np.abs(got - want)
    ok = bool((diff <= RAW_TOL["atol"] + RAW_TOL["rtol"] * np.abs(want)).all())
    report = dict(batch=int(batch.shape[0]), size=list(batch.shape[-2:]), ok=ok)
    report.update(max_abs_diff=float(diff.max(initial=0.0)), shape=list(got.shape))
    if not ok:
        raise ExportMismatchError(
            f"the exported raw outputs disagree with the eager model: {report}"
        )
    return report


def export_raw_onnx(model, image: torch.Tensor, output: str, opset: int = 17) -> Tuple[str, Dict]:
    """
    Export ``RawOutputs(model)`` to ``output``/model_raw.onnx (input ``images``
    (N, 3, H, W), output ``raw`` (N, P, C + 4 (n + 1)); N, H, W dynamic), check
    it at batch 1 and 4 and another size, write ``raw_layout.json`` and
    ``export_check.json``.

    Args:
        image: (3, H, W) a sample in the model's input format, 0-255.

    Returns:
        (path of the ONNX model, the check's report)
    """
    import onnxruntime

    raw_model = RawOutputs(model).eval()
    layout = raw_model.layout
    image = _padded(image, layout["size_divisibility"])
    path = os.path.join(output, "model_raw.onnx")
    os.makedirs(output, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            raw_model, (image[None].expand(2, -1, -1, -1).contiguous(),), path,
            opset_version=opset, dynamo=False, input_names=["images"], output_names=["raw"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                          "raw": {0: "batch", 1: "locations"}},
        )  # fmt: skip
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    other = _padded(F.interpolate(image[None], scale_factor=0.75, mode="bilinear")[0],
                    layout["size_divisibility"])  # fmt: skip
    g = torch.Generator().manual_seed(0)
    batch4 = torch.stack([image] + [(image + 20 * torch.randn(image.shape, generator=g).to(image))
                                    .clamp(0, 255) for _ in range(3)])  # fmt: skip
    checks = [_check(session, raw_model, b) for b in (image[None], batch4, other[None])]
    with open(os.path.join(output, "raw_layout.json"), "w") as f:
        json.dump(layout, f, indent=2)
    report = dict(outputs="raw", checks=checks, layout=layout, opset=opset)
    with open(os.path.join(output, "export_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    return path, report
