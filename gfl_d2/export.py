"""
Export of a GFL model by tracing (TorchScript or ONNX), checked against the
eager model; ``tools/export_model.py`` is its command line.

A model with deformable convolutions (:mod:`gfl_d2.modeling.deform_conv`)
exports to ONNX at opset 19, where ``torchvision::deform_conv2d`` becomes the
standard ``DeformConv`` operator (same offset layout: (dy, dx) per kernel
point per offset group); other models keep opset 17.
"""

import copy
import json
import logging
import os
from typing import Optional

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter

from .checkpoint import load_trained_weights
from .errors import ExportMismatchError, UsageError
from .modeling.deform_conv import DeformConv
from .predictor import test_time_augmentations, to_model_input

__all__ = ["export", "verify", "sample_input", "BOX_TOL", "SCORE_TOL"]

logger = logging.getLogger("detectron2")
BOX_TOL, SCORE_TOL = 1e-3, 1e-4
# boxes are compared to BOX_TOL plus this share of their coordinates: 2e-6 is ~16 float32
# rounding steps of a coordinate, what a deep backbone's rounding (other kernels, another
# summation order) adds up to at the far end of the integral, where one bin is up to 128 px
BOX_RTOL = 2e-6
ONNX_OPSET = 17
DEFORM_CONV_OPSET = 19  # the first opset with DeformConv


def sample_input(cfg, path: Optional[str]) -> torch.Tensor:
    """The sample image (a random one without ``path``) as the model's input, (3, H, W) float."""
    augmentations, fmt = test_time_augmentations(cfg)
    if path is None:
        image = np.random.default_rng(0).integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    else:
        image = read_image(path, format=fmt)
    return to_model_input(image, augmentations)


def inference(model, inputs):
    # the model's own output size: no resize back to an original size
    return [{"instances": model(inputs)[0]["instances"]}]


def _load_for_export(cfg, device: str, keep_box_distributions: bool):
    """
    The config's model on ``device``, in eval mode, with the trained weights of
    ``train.init_checkpoint`` (:func:`~gfl_d2.checkpoint.load_trained_weights`).
    """
    model = instantiate(cfg.model).to(device).eval()
    load_trained_weights(model, cfg.train.init_checkpoint)
    if not keep_box_distributions:
        model.output_box_distributions = False
    return model


def _has_deformable_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, DeformConv) for m in model.modules())


def _deform_conv2d_symbolic(
    g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    groups, offset_groups, use_mask,
):  # fmt: skip
    """
    ``torchvision::deform_conv2d`` as ONNX ``DeformConv`` (opset 19): the same
    inputs and offset layout; torchvision's placeholder mask (``use_mask``
    false) is left out, and its bias (zeros when the layer has none) kept.
    """
    inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=[stride_h, stride_w],
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        dilations_i=[dil_h, dil_w],
        group_i=groups,
        offset_group_i=offset_groups,
    )


def _register_deform_conv_symbolic():
    """Teach the TorchScript-based ONNX exporter ``torchvision::deform_conv2d`` (opset >= 19)."""
    from torch.onnx import symbolic_helper

    # five tensors, eight ints (strides, pads, dilations, groups, offset groups), use_mask
    parse = symbolic_helper.parse_args(*(["v"] * 5), *(["i"] * 8), "b")
    torch.onnx.register_custom_op_symbolic(
        "torchvision::deform_conv2d", parse(_deform_conv2d_symbolic), DEFORM_CONV_OPSET
    )


def _require_runtime_deform_conv():
    """
    :class:`~gfl_d2.errors.UsageError` unless onnxruntime, which checks the
    export, runs ONNX ``DeformConv`` (tried on a one-node model): its kernel is
    recent (1.32 has one; 1.18 and 1.19 are reported to answer NOT_IMPLEMENTED).
    """
    import onnxruntime
    from onnx import TensorProto, helper

    shapes = {"X": [1, 1, 2, 2], "W": [1, 1, 1, 1], "offset": [1, 2, 2, 2]}
    node = helper.make_node("DeformConv", list(shapes), ["Y"])
    graph = helper.make_graph(
        [node],
        "deform_conv",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in shapes.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFORM_CONV_OPSET)])
    model.ir_version = 9  # opset 19's
    try:
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        session.run(None, {k: np.zeros(v, np.float32) for k, v in shapes.items()})
    except Exception as e:
        raise UsageError(
            f"the model has deformable convolutions, which export to ONNX DeformConv "
            f"(opset {DEFORM_CONV_OPSET}), and onnxruntime {onnxruntime.__version__} cannot "
            f"run it to check the export ({type(e).__name__}: {e}); use --format torchscript, "
            "or an onnxruntime that implements DeformConv"
        ) from e


def _write_traced(adapter, fmt: str, output: str, fields) -> str:
    """Trace ``adapter`` into ``output``/model.ts (TorchScript) or model.onnx; the file's path."""
    if fmt == "torchscript":
        path = os.path.join(output, "model.ts")
        with torch.no_grad():
            traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        traced.save(path)
        return path
    opset = ONNX_OPSET
    if _has_deformable_conv(adapter):
        _require_runtime_deform_conv()
        _register_deform_conv_symbolic()
        opset = DEFORM_CONV_OPSET
    path = os.path.join(output, "model.onnx")
    dynamic = {"image": {1: "height", 2: "width"}}
    dynamic.update({name: {0: "detections"} for name in fields})
    with torch.no_grad():
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            path,
            opset_version=opset,
            dynamo=False,
            input_names=["image"],
            output_names=list(fields) + ["image_size"],
            dynamic_axes=dynamic,
        )
    return path


def _export_dense(model, image, output: str, fmt: str, outputs: str):
    """
    The per-location ``outputs`` ("raw" or "decoded") to ONNX (opset 19 with
    deformable convs), checked; (path, report).
    """
    from .export_raw import export_dense_onnx

    if fmt != "onnx":
        raise UsageError(f"--outputs {outputs} exports ONNX only: add --format onnx")
    opset = ONNX_OPSET
    if _has_deformable_conv(model):
        _require_runtime_deform_conv()
        _register_deform_conv_symbolic()
        opset = DEFORM_CONV_OPSET
    path, report = export_dense_onnx(model, image.cpu(), output, outputs, opset)
    logger.info(f"exported {path} ({outputs} outputs, dynamic batch); checks: {report['checks']}")
    return path, report


def export(
    cfg,
    output: str,
    fmt: str = "torchscript",
    method: str = "tracing",
    device: str = "cpu",
    sample_image: Optional[str] = None,
    keep_box_distributions: bool = False,
    config_file: Optional[str] = None,
    outputs: str = "detections",
):
    """
    Trace ``cfg.model`` (weights from ``cfg.train.init_checkpoint``) into
    ``output``/model.ts (``fmt="torchscript"``) or model.onnx (``"onnx"``),
    check it against the eager model on the sample image and on another size,
    and write the check to ``export_check.json``. ``outputs="raw"`` or
    ``"decoded"``: ONNX of the per-location outputs before any selection, with
    a dynamic batch, instead (:func:`gfl_d2.export_raw.export_dense_onnx`).

    Returns:
        (path of the exported model, the check's report)
    """
    if method == "scripting":
        raise UsageError(
            "--export-method scripting is not supported for GFL: detectron2 can script only "
            "models whose "
            "outputs are typed Instances (GeneralizedRCNN); use --export-method tracing"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device cuda requested but CUDA is not available")
    model = _load_for_export(cfg, device, keep_box_distributions)
    image = sample_input(cfg, sample_image).to(device)
    if outputs in ("raw", "decoded"):
        return _export_dense(model, image, output, fmt, outputs)
    adapter = TracingAdapter(model, [{"image": image}], inference)
    adapter.eval()  # exporters restore the wrapper's mode afterwards
    os.makedirs(output, exist_ok=True)
    fields = sorted(model([{"image": image}])[0]["instances"].get_fields())
    path = _write_traced(adapter, fmt, output, fields)
    logger.info(f"exported {path}; outputs: {fields + ['image_size']}")
    report = verify(model, path, fmt, image, fields)
    # the traced graph keeps height and width dynamic: check another size too
    h, w = image.shape[-2:]
    other = torch.nn.functional.interpolate(
        image[None], size=(max(32, h * 3 // 4), w), mode="bilinear"
    )[0]
    report["other_size"] = dict(
        verify(model, path, fmt, other, fields), size=list(other.shape[-2:])
    )
    with open(os.path.join(output, "export_check.json"), "w") as f:
        json.dump(dict(report, outputs=fields + ["image_size"], config=config_file), f, indent=2)
    return path, report


def run_exported(path, fmt, image):
    """The exported model's outputs as numpy arrays, the runtime that ran it, and its device."""
    if fmt == "torchscript":
        # no map_location: it would move the graph's CPU constants (the shape arithmetic
        # of ImageList padding) to the GPU too; the weights are already on the export device
        with torch.no_grad():
            outs = torch.jit.load(path)(image)
        return [o.cpu().numpy() for o in outs], f"torch.jit on {image.device}", image.device
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if (
        image.device.type == "cuda"
        and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(path, providers=providers)
    outs = session.run(None, {session.get_inputs()[0].name: image.cpu().numpy()})
    provider = session.get_providers()[0]
    return (
        outs,
        f"onnxruntime {provider}",
        image.device if provider == "CUDAExecutionProvider" else torch.device("cpu"),
    )


def eager_reference(model, image, device):
    """
    The eager model's detections on ``device``, the one the exported model ran on:
    onnxruntime's CPU provider checks a CUDA export against the model on the CPU, since
    GPU arithmetic (TF32 convolutions on recent GPUs, which a traced graph keeps as
    traced) differs from the CPU's enough to move detections across the score threshold
    and reorder near-equal scores.
    """
    if device != image.device:
        model = copy.deepcopy(model).to(device)
    with torch.no_grad():
        return model([{"image": image.to(device)}])[0]["instances"].to("cpu")


def verify(model, path, fmt, image, fields):
    """
    Compare the exported model with the eager one on ``image``;
    :class:`~gfl_d2.errors.ExportMismatchError` if they disagree.
    """
    image = image.round()  # an image as the loader gives it
    outs, runtime, device = run_exported(path, fmt, image)
    outs = dict(zip(fields, outs))
    eager = eager_reference(model, image, device)
    boxes, scores, classes = (
        eager.pred_boxes.tensor.numpy(),
        eager.scores.numpy(),
        eager.pred_classes.numpy(),
    )
    if outs["pred_boxes"].shape != boxes.shape:
        raise ExportMismatchError(
            f"export check failed: {outs['pred_boxes'].shape[0]} detections vs {len(boxes)} eager"
        )
    box_diff = np.abs(outs["pred_boxes"] - boxes)
    report = dict(
        detections=int(len(boxes)),
        max_box_diff=float(box_diff.max(initial=0.0)),
        box_diff_within_tolerance=bool((box_diff <= BOX_TOL + BOX_RTOL * np.abs(boxes)).all()),
        max_score_diff=float(np.abs(outs["scores"] - scores).max(initial=0.0)),
        classes_equal=bool(np.array_equal(outs["pred_classes"], classes)),
        runtime=runtime,
    )
    # the per-detection extras: the quality in the score (V2, ATSS), the edge std (pixels)
    for name, tol in (("pred_quality", SCORE_TOL), ("pred_box_std", BOX_TOL)):
        if name in outs and eager.has(name):
            diff = float(np.abs(outs[name] - eager.get(name).numpy()).max(initial=0.0))
            report[f"max_{name[len('pred_') :]}_diff"] = diff
            report["extras_ok"] = report.get("extras_ok", True) and diff <= tol
    ok = (
        report["box_diff_within_tolerance"]
        and report["max_score_diff"] <= SCORE_TOL
        and report["classes_equal"]
        and report.get("extras_ok", True)
    )
    logger.info(
        f"export check at {tuple(image.shape[-2:])}: {report} -> {'OK' if ok else 'MISMATCH'}"
    )
    if not ok:
        raise ExportMismatchError(f"the exported model disagrees with the eager model: {report}")
    return report
