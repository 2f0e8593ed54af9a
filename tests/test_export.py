"""TorchScript and ONNX export of a small GFL: the exported models run and match eager."""

import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.data import write_split
from gfl_d2.export import export
from gfl_d2.lazy_config import load_lazy_config

from .repo import ROOT

CONFIG = os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py")
CONFIG_V2 = os.path.join(ROOT, "configs", "Synthetic", "gflv2_R_18_FPN_shapes.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(CONFIG).model)
    with (
        torch.no_grad()
    ):  # sharper edge distributions than at initialisation: boxes of various sizes
        model.head.bbox_pred.bias.view(4, -1)[:, 1:4] += torch.tensor([3.0, 2.0, 1.0])
    DetectionCheckpointer(model, save_dir=str(tmp)).save("weights")
    write_split(str(tmp / "imgs"), "x", 1, seed=3, progress=False)
    return tmp


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("keep", [False, True])
def test_export_matches_eager(setup, fmt, keep):
    tmp = setup
    out = tmp / f"{fmt}_{keep}"
    cfg = load_lazy_config(
        CONFIG, [f"train.init_checkpoint={tmp / 'weights.pth'}", "model.test_score_thresh=0.0"]
    )
    path, report = export(
        cfg,
        str(out),
        fmt,
        sample_image=str(tmp / "imgs" / "x" / "000000.png"),
        keep_box_distributions=keep,
        config_file=CONFIG,
    )
    assert os.path.isfile(path) and path.endswith(
        "model.ts" if fmt == "torchscript" else "model.onnx"
    )
    assert report["detections"] == 100
    assert (
        report["max_box_diff"] <= 1e-3
        and report["max_score_diff"] <= 1e-4
        and report["classes_equal"]
    )
    other = report["other_size"]
    assert other["size"] != [128, 128] and other["max_box_diff"] <= 1e-3 and other["classes_equal"]
    saved = json.loads((out / "export_check.json").read_text())
    assert saved["outputs"][-1] == "image_size"
    assert ("pred_box_std" in saved["outputs"]) == keep
    if fmt == "onnx":  # no deformable convolution: opset 17, as before DeformConv support
        import onnx

        graph = onnx.load(path)
        assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
        assert all(node.op_type != "DeformConv" for node in graph.graph.node)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_v2_exports_with_its_quality(tmp_path, fmt):
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(CONFIG_V2).model)
    with torch.no_grad():  # a quality that varies with the distributions' shapes
        model.head.bbox_pred.bias.view(4, -1)[:, 1:4] += torch.tensor([3.0, 2.0, 1.0])
        model.head.dgqp.layers[2].weight.normal_(0.0, 1.0)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    write_split(str(tmp_path / "imgs"), "x", 1, seed=3, progress=False)
    cfg = load_lazy_config(
        CONFIG_V2,
        [f"train.init_checkpoint={tmp_path / 'weights.pth'}", "model.test_score_thresh=0.0"],
    )
    path, report = export(
        cfg,
        str(tmp_path / "out"),
        fmt,
        sample_image=str(tmp_path / "imgs" / "x" / "000000.png"),
        keep_box_distributions=True,
        config_file=CONFIG_V2,
    )
    assert report["detections"] == 100 and report["classes_equal"]
    assert (
        report["max_score_diff"] <= 1e-4
        and report["max_quality_diff"] <= 1e-4
        and report["max_box_std_diff"] <= 1e-3
    )
    assert report["other_size"]["max_quality_diff"] <= 1e-4
    saved = json.loads((tmp_path / "out" / "export_check.json").read_text())
    assert {"pred_quality", "pred_box_std", "pred_box_dists"} <= set(saved["outputs"])


def reductions_over_candidates(path):
    """
    ONNX reductions (and MatMuls) that take, directly or not, a tensor of the score-filtered
    candidates.
    """
    import onnx

    graph = onnx.load(path).graph
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [out for node in graph.node if node.op_type == "NonZero" for out in node.output]
    seen, found = set(), []
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in seen:
                seen.add(node.name)
                if node.op_type.startswith("Reduce") or node.op_type in ("MatMul", "Gemm"):
                    found.append(f"{node.op_type} {node.name}")
                frontier.extend(node.output)
    return found


def test_onnx_graph_has_no_reduction_over_the_candidates(setup):
    """
    onnxruntime up to 1.31 returns the input's shape from a reduction over an
    empty tensor (a level without candidates, an image without detections),
    and MatMul refuses one: an exported GFL with such an op fails at run time
    there (seen on onnxruntime 1.30 with an exported quick-start model). The
    exported graph must keep these ops away from the candidates.
    """
    tmp = setup
    cfg = load_lazy_config(CONFIG, [f"train.init_checkpoint={tmp / 'weights.pth'}"])
    path, _ = export(cfg, str(tmp / "reductions"), "onnx", keep_box_distributions=True)
    assert reductions_over_candidates(path) == []


def test_scripting_is_refused_clearly(setup, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "tools/export_model.py",
            "--config-file",
            CONFIG,
            "--export-method",
            "scripting",
            "--output",
            str(tmp_path / "s"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "scripting is not supported for GFL" in proc.stderr
