"""
Small rewrites and statistics of exported ONNX graphs: the input
normalisation's division folded into the first convolution, the op types of
a graph (as written, or as ONNX Runtime runs it after its own optimisations).
"""

import collections
from typing import Dict, Optional

import numpy as np

__all__ = ["fold_input_scale", "op_counts", "runtime_op_counts"]


def _constant(graph, name: str) -> Optional[np.ndarray]:
    """The value of ``name`` if it is an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _per_channel(divisor: np.ndarray, channels: int) -> Optional[np.ndarray]:
    """``divisor`` as (channels,) if it broadcasts as one value per channel of (N, C, H, W)."""
    if divisor.size == 1:
        return np.full(channels, divisor.item(), np.float32)
    shape = [1] * (4 - divisor.ndim) + list(divisor.shape)
    return divisor.reshape(-1) if shape == [1, channels, 1, 1] else None


def fold_input_scale(path: str) -> bool:
    """
    Rewrite the ONNX model at ``path`` so that a ``Div`` by a constant per channel
    whose only reader is a convolution (group 1) is gone, its weights divided
    instead: ``conv(x / s) = conv'(x)`` with ``w'[:, c] = w[:, c] / s[c]``, exact
    with zero padding (0 / s = 0). It spares one pass over the input image (the
    normalisation's division by the std). Returns whether it folded one.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    graph = model.graph
    readers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    weights = {init.name: init for init in graph.initializer}
    for div in [n for n in graph.node if n.op_type == "Div"]:
        found = _foldable(graph, div, readers, weights)
        if found is None:
            continue
        conv, scale = found
        w = numpy_helper.to_array(weights[conv.input[1]])
        folded = (w / scale.reshape(1, -1, 1, 1)).astype(w.dtype)
        weights[conv.input[1]].CopyFrom(numpy_helper.from_array(folded, conv.input[1]))
        conv.input[0] = div.input[0]
        graph.node.remove(div)
        _drop_if_unread(graph, div.input[1], readers)
        onnx.save(model, path)
        return True
    return False


def _drop_if_unread(graph, name: str, readers) -> None:
    """Remove the constant ``name`` (initializer or Constant node) if the Div alone read it."""
    if len(readers[name]) != 1:
        return
    for init in graph.initializer:
        if init.name == name:
            graph.initializer.remove(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            graph.node.remove(node)


def _foldable(graph, div, readers, weights):
    """(the convolution, (C,) divisor) if ``div`` can fold into the convolution reading it."""
    out = div.output[0]
    if len(readers[out]) != 1 or out in {o.name for o in graph.output}:
        return None
    conv = readers[out][0]
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    if conv.op_type != "Conv" or group != 1 or conv.input[0] != out:
        return None
    divisor = _constant(graph, div.input[1])
    if divisor is None or conv.input[1] not in weights or len(readers[conv.input[1]]) != 1:
        return None
    channels = weights[conv.input[1]].dims[1]
    scale = _per_channel(divisor, channels)
    return None if scale is None else (conv, scale)


def op_counts(path: str) -> Dict[str, int]:
    """Op types of the ONNX model at ``path`` and how many nodes of each, most frequent first."""
    import onnx

    counts = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    return dict(counts.most_common())


def runtime_op_counts(path: str, optimized: str) -> Dict[str, int]:
    """
    :func:`op_counts` of the graph ONNX Runtime runs on this CPU (all its graph
    optimisations, written to ``optimized``): fused, re-laid-out and with the
    shape arithmetic of constant shapes folded.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = optimized
    options.log_severity_level = 3  # its warning that the file suits this machine only
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return op_counts(optimized)
