"""
INT8 static quantisation of an exported GFL (ONNX) with ONNX Runtime's
quantisation tools, calibrated on images the caller provides (the training
images, through the model's test-time resize): QDQ format, per-channel int8
weights and uint8 activations, ranges by min/max over the calibration set.

What decides the boxes stays in float: the head's output convolutions (the
last convolution on every path to a graph output; they give the class logits
and the edge-bin logits) and every node after them (the sigmoid, the DFL
softmax and integral where the graph has them, reshapes, concatenation).
:func:`float_tail` finds those nodes from the graph, so the rule holds for
the raw and the decoded exports alike.
"""

import os
from typing import List, Optional, Sequence

import numpy as np

from .errors import UsageError

__all__ = ["float_tail", "quantize_onnx", "quantized_ops", "calibration_images", "quantize_export"]


def float_tail(model) -> List[str]:
    """
    Names of the nodes of ``model`` (an ``onnx.ModelProto``) that stay float:
    walking back from every graph output, each node met up to and including
    the first ``Conv`` on its path.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    tail, stack = {}, [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in tail:
            continue
        tail[node.name] = node
        if node.op_type != "Conv":
            stack.extend(i for i in node.input if i)
    unnamed = [n for n in tail.values() if not n.name]
    if unnamed:
        raise ValueError(f"{len(unnamed)} nodes without names: name the graph's nodes first")
    return list(tail)


class _Images:
    """ONNX Runtime's CalibrationDataReader over (N, 3, H, W) float32 arrays."""

    def __init__(self, input_name: str, images: Sequence[np.ndarray]):
        self._name, self._iter = input_name, iter(images)

    def get_next(self) -> Optional[dict]:
        batch = next(self._iter, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch, np.float32)}


def quantize_onnx(
    source: str, output: str, images: Sequence[np.ndarray], per_channel: bool = True
) -> List[str]:
    """
    Quantise the ONNX model ``source`` into ``output``.

    Args:
        images: calibration batches, each (N, 3, H, W) float32, as the model's
            input takes them (its own ``images`` input: 0-255, its channel order).
        per_channel: one weight scale per output channel (else one per tensor).

    Returns:
        the names of the nodes kept in float (:func:`float_tail`).
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise UsageError(f"INT8 quantisation needs onnx and onnxruntime: {e}") from e
    if not len(images):
        raise UsageError("no calibration images: INT8 ranges need at least one image")
    prepared = output + ".prepared.onnx"
    # shape inference and graph optimisation first, as ONNX Runtime recommends
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    try:
        model = onnx.load(prepared)
        keep = float_tail(model)
        reader = _Images(model.graph.input[0].name, images)
        quantize_static(
            prepared, output, reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
        )  # fmt: skip
    finally:
        if os.path.exists(prepared):
            os.remove(prepared)
    return keep


def quantized_ops(path: str) -> dict:
    """Op types of the ONNX model ``path`` with their counts (QuantizeLinear... included)."""
    import onnx

    counts: dict = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def calibration_images(cfg, count: int, divisor: int, dataset=None) -> List[np.ndarray]:
    """
    The first ``count`` images of ``dataset`` (default: the LazyConfig's
    ``dataloader.train.dataset``) through its test-time mapper (the resize the
    deployed model sees), zero-padded to multiples of ``divisor``: each
    (1, 3, H, W) float32, 0-255, in the model's input format.
    """
    from detectron2.config import instantiate

    mapper = instantiate(cfg.dataloader.test.mapper)
    records = instantiate(dataset if dataset is not None else cfg.dataloader.train.dataset)
    images = []
    for record in records[:count]:
        image = mapper(dict(record))["image"].float().numpy()
        h, w = image.shape[-2:]
        images.append(np.pad(image, ((0, 0), (0, -h % divisor), (0, -w % divisor)))[None])
    return images


def quantize_export(cfg, path: str, count: int, divisor: int) -> str:
    """
    ``path`` (an exported ONNX model) quantised beside it as ``*_int8.onnx``,
    calibrated on ``count`` training images of ``cfg``; its path.
    """
    if count < 1:
        raise UsageError(f"--int8 needs at least one calibration image, got {count}")
    output = os.path.splitext(path)[0] + "_int8.onnx"
    quantize_onnx(path, output, calibration_images(cfg, count, divisor))
    return output
