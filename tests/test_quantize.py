"""
INT8 static quantisation (gfl_d2.quantize) of a raw-output export: the
backbone, neck and towers quantised, the head's output convolutions and what
follows them left in float, and the INT8 model's outputs near the fp32 model's.
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
from gfl_d2.export_raw import export_raw_onnx
from gfl_d2.quantize import float_tail, quantize_onnx

from .repo import ROOT
from .test_edge_decoder import confident

SIZE = 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = LazyConfig.load("configs/COCO-Detection/NanoDet/nanodet_plus_m_320.py")
    cfg.model.num_classes = 4
    if "aux_head" in cfg.model:
        cfg.model.aux_head = None
    torch.manual_seed(0)
    model = confident(instantiate(cfg.model), bias=-1.0)
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(1, 3, SIZE, SIZE, generator=g) * 255 for _ in range(3)]
    out = tmp_path_factory.mktemp("quantize")
    path, _ = export_raw_onnx(model, images[0][0], str(out))
    int8 = str(out / "int8.onnx")
    keep = quantize_onnx(path, int8, [x.numpy() for x in images])
    return dict(model=model, fp32=path, int8=int8, keep=keep, images=images)


def _convs(path):
    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    return graph, {n.name: producer.get(n.input[1]) for n in graph.node if n.op_type == "Conv"}


def test_only_the_output_convs_and_what_follows_stay_float(exported):
    graph, convs = _convs(exported["int8"])
    float_convs = {
        name for name, w in convs.items() if w is None or w.op_type != "DequantizeLinear"
    }
    assert len(float_convs) == 4 and all("outputs" in name for name in float_convs)
    assert len(convs) - len(float_convs) > 50  # every other conv reads int8 weights
    kept = set(exported["keep"])
    assert {n.op_type for n in graph.node if n.name in kept} >= {"Conv", "Sigmoid", "Concat"}


def test_float_tail_stops_at_the_first_conv_on_each_path():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w"], ["a"], name="first"),
        onnx.helper.make_node("Relu", ["a"], ["b"], name="relu"),
        onnx.helper.make_node("Conv", ["b", "w"], ["c"], name="last"),
        onnx.helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid"),
    ]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y], [w]))
    assert sorted(float_tail(model)) == ["last", "sigmoid"]


def test_int8_outputs_follow_fp32(exported):
    """
    Random weights through some 60 quantised layers amplify 8-bit rounding (a trained
    model's AP cost is what tools/int8_study.py measures): the INT8 outputs still follow
    the fp32 ones; ranges taken from wrong tensors or a broken scale leave no correlation.
    """
    sessions = [ort.InferenceSession(exported[k]) for k in ("fp32", "int8")]
    image = exported["images"][0].numpy()
    fp32, int8 = (s.run(None, {"images": image})[0][0] for s in sessions)
    c = exported["model"].num_classes
    for part in (slice(0, c), slice(c, None)):  # scores, edge-bin logits
        assert np.corrcoef(fp32[:, part].ravel(), int8[:, part].ravel())[0, 1] > 0.5


def test_no_calibration_images_is_refused(exported, tmp_path):
    with pytest.raises(UsageError, match="no calibration images"):
        quantize_onnx(exported["fp32"], str(tmp_path / "x.onnx"), [])


def _export_model(tmp_path, *extra):
    config = os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    torch.manual_seed(0)
    weights = DetectionCheckpointer(instantiate(LazyConfig.load(config).model), str(tmp_path))
    weights.save("weights")
    return subprocess.run(
        [sys.executable, "tools/export_model.py", "--config-file", config, "--output",
         str(tmp_path / "out"), *extra, "dataloader.train.dataset.names.num_images=3",
         "dataloader.test.dataset.names.num_images=1",
         f"train.init_checkpoint={tmp_path / 'weights.pth'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_export_model_writes_an_int8_model_calibrated_on_training_images(tmp_path):
    proc = _export_model(tmp_path, "--format", "onnx", "--outputs", "raw", "--int8", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    int8 = tmp_path / "out" / "model_raw_int8.onnx"
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert ort.InferenceSession(str(int8)).get_inputs()[0].shape[0] == "batch"


def test_int8_without_raw_outputs_is_refused(tmp_path):
    proc = _export_model(tmp_path, "--format", "onnx", "--int8", "3")
    assert proc.returncode != 0 and "--int8 quantises the raw outputs" in proc.stderr
