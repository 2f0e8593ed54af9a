"""
INT8 static quantisation of an exported GFL (ONNX) with ONNX Runtime's
quantisation tools, calibrated on images the caller provides (the training
images, through the model's test-time resize): QDQ format, per-channel int8
weights (7-bit, see ``REDUCE_RANGE``) and uint8 activations, ranges by min/max
over the calibration set.

What decides the boxes stays in float: the head's output convolutions (the
last convolution on every path to a graph output; they give the class logits
and the edge-bin logits) and every node downstream of them (the sigmoid, the
DFL softmax and integral and the box decoding where the graph has them, GFL
V2's quality predictor, reshapes, concatenation). :func:`float_tail` finds
those nodes from the graph, so the rule holds for the raw and the decoded
exports alike.
"""

import itertools
import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from .errors import UsageError

__all__ = [
    "float_tail",
    "quantize_onnx",
    "calibration_records",
    "calibration_images",
    "network_inputs",
    "quantize_export",
    "REDUCE_RANGE",
]

# 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) ONNX
# Runtime's u8 x s8 kernels add pairs of products in int16 (vpmaddubsw), which
# saturates with full-range weights; reduce_range keeps the sums exact there, for
# the price of one bit of weight precision (no speed difference here)
REDUCE_RANGE = True


def _output_convs(nodes: list, outputs: List[str]) -> set:
    """
    The head's output convolutions: walking back from the graph's ``outputs``,
    the first ``Conv`` met on each path (a ``Shape`` reads no values: the walk
    stops there); with the nodes walked through. Indices into ``nodes``.
    """
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    walked, stack = set(), list(outputs)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in walked:
            continue
        walked.add(i)
        if nodes[i].op_type not in ("Conv", "Shape"):
            stack.extend(name for name in nodes[i].input if name)
    return walked


def float_tail(model) -> List[str]:
    """
    Names of the nodes of ``model`` (an ``onnx.ModelProto``) that stay float:
    the head's output convolutions (the last ``Conv`` on each path to a graph
    output) and every node downstream of them (the sigmoid, the DFL softmax
    and integral, the box decoding, GFL V2's quality predictor, which reads the
    edge distributions), and what lies between them and the outputs.
    """
    nodes = list(model.graph.node)
    readers: Dict[str, List[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            readers.setdefault(name, []).append(i)
    tail = _output_convs(nodes, [o.name for o in model.graph.output])
    stack = [i for i in tail if nodes[i].op_type == "Conv"]
    while stack:  # everything downstream of the output convolutions
        for out in nodes[stack.pop()].output:
            for i in readers.get(out, []):
                if i not in tail:
                    tail.add(i)
                    stack.append(i)
    if any(not nodes[i].name for i in tail):
        raise ValueError("nodes without names: name the graph's nodes first")
    return [nodes[i].name for i in sorted(tail)]


class _Images:
    """ONNX Runtime's CalibrationDataReader over (N, 3, H, W) float32 arrays, read lazily."""

    def __init__(self, input_name: str, images: Iterator[np.ndarray]):
        self._name, self._iter = input_name, images

    def get_next(self) -> Optional[dict]:
        batch = next(self._iter, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch, np.float32)}


def _quantization_api():
    try:
        import onnx
        import onnxruntime.quantization as quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as e:
        raise UsageError(
            f"INT8 quantisation needs onnx and onnxruntime (pip install onnx onnxruntime): {e}"
        ) from e
    return onnx, quantization, quant_pre_process


# the first opset whose QuantizeLinear / DequantizeLinear take an axis (per-channel scales)
MIN_OPSET = 13


def _at_least_opset(onnx, model, path: str):
    """``model`` converted to ``MIN_OPSET`` if older (NanoDet's export: 11), saved at ``path``."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, MIN_OPSET)
        for i, node in enumerate(model.graph.node):  # the converter's new nodes: named for
            node.name = node.name or f"{node.op_type}_converted_{i}"  # nodes_to_exclude
        onnx.save(model, path)
    return model


def quantize_onnx(
    source: str, output: str, images: Iterable[np.ndarray], per_channel: bool = True,
    reduce_range: bool = REDUCE_RANGE,
) -> List[str]:  # fmt: skip
    """
    Quantise the ONNX model ``source`` into ``output`` (QDQ; uint8 activations,
    int8 weights; ranges by min/max over ``images``).

    Args:
        images: calibration batches, each (N, 3, H, W) float32, as the model's
            input takes them (its own ``images`` input: 0-255, its channel
            order, resized and padded as the deployment will): the
            normalisation is inside the graph, so the ranges are those of
            deployment.
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights (see ``REDUCE_RANGE``).

    Returns:
        the names of the nodes kept in float (:func:`float_tail`).
    """
    onnx, q, quant_pre_process = _quantization_api()
    images = iter(images)
    first = next(images, None)
    if first is None:
        raise UsageError("no calibration images: INT8 ranges need at least one image")
    prepared = output + ".prepared.onnx"
    # shape inference and graph optimisation first, as ONNX Runtime recommends
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    try:
        model = _at_least_opset(onnx, onnx.load(prepared), prepared)
        keep = float_tail(model)
        reader = _Images(model.graph.input[0].name, itertools.chain([first], images))
        q.quantize_static(
            prepared, output, reader, quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
            activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
            reduce_range=reduce_range, nodes_to_exclude=keep,
        )  # fmt: skip
    finally:
        if os.path.exists(prepared):
            os.remove(prepared)
    return keep


def calibration_records(cfg, dataset: Union[str, None, object] = None) -> List[Dict]:
    """
    The dataset dicts to calibrate on: those of the registered detectron2
    dataset ``dataset`` (a name, or names joined by commas), of a LazyConfig
    dataset node, or by default of the config's ``dataloader.train.dataset``
    (the training images).
    """
    from detectron2.config import instantiate
    from detectron2.data import get_detection_dataset_dicts

    if dataset is None:
        dataset = cfg.dataloader.train.dataset
    if isinstance(dataset, str):
        return get_detection_dataset_dicts(dataset.split(","), filter_empty=False)
    return instantiate(dataset)


def network_inputs(cfg, records: Sequence[Dict], divisor: int) -> Iterator[Dict]:
    """
    ``records`` (dataset dicts) through the config's test-time mapper (the
    resize the deployed model sees), zero-padded to multiples of ``divisor``,
    one at a time: ``array`` (1, 3, H, W) float32, 0-255, in the model's input
    format (the graph normalises it itself), ``size`` (h, w) before padding, and
    the ``record``.
    """
    from detectron2.config import instantiate

    mapper = instantiate(cfg.dataloader.test.mapper)
    for record in records:
        image = mapper(dict(record))["image"].float().numpy()
        h, w = image.shape[-2:]
        array = np.pad(image, ((0, 0), (0, -h % divisor), (0, -w % divisor)))[None]
        yield dict(array=array, size=(h, w), record=record)


def calibration_images(cfg, count: int, divisor: int, dataset=None) -> Iterator[np.ndarray]:
    """
    The first ``count`` images of :func:`calibration_records` as
    :func:`network_inputs` gives them, each (1, 3, H, W).
    """
    records = calibration_records(cfg, dataset)[:count]
    return (item["array"] for item in network_inputs(cfg, records, divisor))


def quantize_export(cfg, path: str, count: int, divisor: int, dataset=None) -> str:
    """
    ``path`` (an exported ONNX model) quantised beside it as ``*_int8.onnx``,
    calibrated on ``count`` images of ``dataset`` (default: the config's
    training set, see :func:`calibration_records`); its path.
    """
    if count < 1:
        raise UsageError(f"--int8 needs at least one calibration image, got {count}")
    output = os.path.splitext(path)[0] + "_int8.onnx"
    quantize_onnx(path, output, calibration_images(cfg, count, divisor, dataset))
    return output
