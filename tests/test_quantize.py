"""
INT8 static quantisation (gfl_d2.quantize) of the per-location exports: the
backbone, neck and towers quantised, the head's output convolutions and what
follows them (the sigmoid, the DFL softmax and integral, the box decoding,
GFL V2's quality predictor) left in float, found from the graph; the INT8
boxes and scores near fp32's; the command's options and refusals.
"""

import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.errors import UsageError
from gfl_d2.export_raw import export_dense_onnx
from gfl_d2.quantize import float_tail, quantize_onnx
from gfl_d2.testing import tiny_gfl_config

from .repo import ROOT
from .test_edge_decoder import confident

SIZE = 128
QDQ = ("QuantizeLinear", "DequantizeLinear")


def smooth_images(count, seed=2):
    """(1, 3, SIZE, SIZE) images, 0-255: bilinear upsampled noise, smoother than pixel noise."""
    g = torch.Generator().manual_seed(seed)
    small = [torch.rand(1, 3, SIZE // 8, SIZE // 8, generator=g) for _ in range(count)]
    return [torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear") * 255
            for x in small]  # fmt: skip


def export_and_quantize(model, out, images, outputs="decoded"):
    path, _ = export_dense_onnx(model, images[0][0], str(out), outputs)
    int8 = str(out / "int8.onnx")
    keep = quantize_onnx(path, int8, [x.numpy() for x in images])
    return dict(model=model, fp32=path, int8=int8, keep=keep, images=images)


@pytest.fixture(scope="module")
def nanodet(tmp_path_factory):
    cfg = LazyConfig.load(
        os.path.join(ROOT, "configs/COCO-Detection/NanoDet/nanodet_plus_m_320.py")
    )
    cfg.model.num_classes = 4
    torch.manual_seed(0)
    model = confident(instantiate(cfg.model), bias=-1.0)
    return export_and_quantize(model, tmp_path_factory.mktemp("nanodet"), smooth_images(3))


def _graph(path):
    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    readers = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return graph, producer, readers


def test_the_convs_read_int8_but_the_output_convs_and_what_follows_stay_float(nanodet):
    graph, producer, readers = _graph(nanodet["int8"])
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = [
        n for n in convs
        if all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
               for i in n.input[:2])
    ]  # fmt: skip
    float_convs = [n for n in convs if n not in quantized]
    assert len(float_convs) == 4 and all("outputs" in n.name for n in float_convs)
    assert len(quantized) > 50  # every other conv: int8 activations and int8 weights
    # downstream of the output convs: no quantisation, to the graph's outputs
    seen, stack = set(), [o for n in float_convs for o in n.output]
    while stack:
        for node in readers.get(stack.pop(), []):
            assert node.op_type not in QDQ, node.name
            if node.name not in seen:
                seen.add(node.name)
                stack.extend(node.output)
    ops = {n.op_type for n in graph.node if n.name in seen}
    assert {"Sigmoid", "Softmax", "MatMul", "Min"} <= ops  # scores, DFL integral, clipping


def test_float_tail_stops_at_the_first_conv_on_each_path_and_takes_what_follows():
    def value(name):
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

    w = onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w"], ["a"], name="first"),
        onnx.helper.make_node("Relu", ["a"], ["b"], name="relu"),
        onnx.helper.make_node("Conv", ["b", "w"], ["c"], name="last"),
        onnx.helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid"),
        # a quality predictor reading the output conv: a conv after it, float too
        onnx.helper.make_node("Softmax", ["c"], ["d"], name="softmax"),
        onnx.helper.make_node("Conv", ["d", "w"], ["e"], name="predictor"),
        onnx.helper.make_node("Mul", ["y", "e"], ["z"], name="product"),
        # a Shape reads no values: the walk back does not pass it
        onnx.helper.make_node("Shape", ["b"], ["s"], name="shape"),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [value("x")], [value("z"), value("s")], [w])
    assert sorted(float_tail(onnx.helper.make_model(graph))) == [
        "last", "predictor", "product", "shape", "sigmoid", "softmax"
    ]  # fmt: skip


def iou(a, b):
    """IoU of (K, 4) boxes with (K, 4) boxes, pair by pair."""
    inter = np.prod(
        np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None), 1
    )
    area = [np.prod(x[:, 2:] - x[:, :2], 1) for x in (a, b)]
    return inter / (area[0] + area[1] - inter)


def test_int8_boxes_and_scores_follow_fp32(tmp_path):
    """
    A small ResNet GFL (some 20 quantised layers), calibrated on images like
    those it then runs on. 8-bit activations step by 1/255 of their range: a
    few tenths of a percent per layer, a few percent of a box edge after 20
    layers; the locations that score over 0.3 in fp32 keep their boxes at IoU
    > 0.9 and their scores within a few hundredths. Ranges taken from darker
    images (a third of the brightness) leave a third of those boxes below 0.9.
    """
    torch.manual_seed(0)
    model = confident(instantiate(tiny_gfl_config(num_classes=3)), bias=-1.0)
    images = smooth_images(5)
    made = export_and_quantize(model, tmp_path, images[:4])
    sessions = [ort.InferenceSession(made[k]) for k in ("fp32", "int8")]
    for image in images:  # four calibration images and a new one
        (boxes, scores), (boxes8, scores8) = (
            s.run(None, {"images": image.numpy()}) for s in sessions
        )
        top = scores[0].max(axis=1) > 0.3
        assert top.sum() > 100
        overlap = iou(boxes[0][top], boxes8[0][top])
        assert (overlap > 0.9).mean() > 0.95 and np.median(overlap) > 0.97
        assert np.median(np.abs(scores - scores8)[0][top]) < 0.03


def test_gfl_v2_quality_predictor_stays_float(tmp_path):
    """
    V2's quality reads the edge distributions: its softmax, top-k and layers
    (1x1 convs on channels-last statistics: MatMuls in the graph) stay float.
    """
    torch.manual_seed(0)
    model = confident(instantiate(tiny_gfl_config(num_classes=3, quality="dgqp")), bias=-1.0)
    made = export_and_quantize(model, tmp_path, smooth_images(1), outputs="raw")
    graph, producer, _ = _graph(made["int8"])
    dgqp = [
        n for n in graph.node if "dgqp" in n.name and n.op_type in ("MatMul", "Softmax", "TopK")
    ]
    assert {n.op_type for n in dgqp} == {"MatMul", "Softmax", "TopK"}
    for node in dgqp:
        assert all(producer.get(i) is None or producer[i].op_type not in QDQ for i in node.input)
    towers = [n for n in graph.node if n.op_type == "Conv" and "subnet" in n.name]
    assert towers and all(producer[n.input[0]].op_type == "DequantizeLinear" for n in towers)


def test_no_calibration_images_or_no_onnxruntime_is_a_clear_error(nanodet, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="no calibration images"):
        quantize_onnx(nanodet["fp32"], str(tmp_path / "x.onnx"), iter([]))
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # as if not installed
    with pytest.raises(UsageError, match="needs onnx and onnxruntime"):
        quantize_onnx(nanodet["fp32"], str(tmp_path / "x.onnx"), [np.zeros((1, 3, 8, 8))])


def _export_model(tmp_path, *extra):
    config = os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    torch.manual_seed(0)
    weights = DetectionCheckpointer(instantiate(LazyConfig.load(config).model), str(tmp_path))
    weights.save("weights")
    return subprocess.run(
        [sys.executable, "tools/export_model.py", "--config-file", config, "--output",
         str(tmp_path / "out"), *extra, "dataloader.train.dataset.names.num_images=3",
         "dataloader.test.dataset.names.num_images=2",
         f"train.init_checkpoint={tmp_path / 'weights.pth'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_export_model_writes_an_int8_model_calibrated_on_a_named_dataset(tmp_path):
    proc = _export_model(
        tmp_path, "--format", "onnx", "--outputs", "decoded", "--int8", "2",
        "--calibration-dataset", "shapes_val",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    int8 = tmp_path / "out" / "model_decoded_int8.onnx"
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops
    assert ort.InferenceSession(str(int8)).get_inputs()[0].shape[0] == "batch"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--int8", "3"], "--int8 quantises the per-location outputs"),
        (["--outputs", "raw", "--calibration-dataset", "shapes_val"], "calibrates --int8"),
    ],
)
def test_int8_options_without_what_they_need_are_refused(tmp_path, extra, message):
    proc = _export_model(tmp_path, "--format", "onnx", *extra)
    assert proc.returncode != 0 and message in proc.stderr
