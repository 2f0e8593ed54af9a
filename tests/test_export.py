"""TorchScript and ONNX export of a small GFL: the exported models run and match eager."""
import importlib.util
import json
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.data import write_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(CONFIG).model)
    with torch.no_grad():  # sharper edge distributions than at initialisation: boxes of various sizes
        model.head.bbox_pred.bias.view(4, -1)[:, 1:4] += torch.tensor([3.0, 2.0, 1.0])
    DetectionCheckpointer(model, save_dir=str(tmp)).save("weights")
    write_split(str(tmp / "imgs"), "x", 1, seed=3, progress=False)
    spec = importlib.util.spec_from_file_location("export_model", os.path.join(ROOT, "tools", "export_model.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tmp, tool


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("keep", [False, True])
def test_export_matches_eager(setup, fmt, keep):
    tmp, tool = setup
    out = tmp / f"{fmt}_{keep}"
    args = ["--config-file", CONFIG, "--format", fmt, "--output", str(out),
            "--sample-image", str(tmp / "imgs" / "x" / "000000.png"),
            f"train.init_checkpoint={tmp / 'weights.pth'}", "model.test_score_thresh=0.0"]
    if keep:
        args.insert(0, "--keep-box-distributions")
    path, report = tool.main(args)
    assert os.path.isfile(path) and path.endswith("model.ts" if fmt == "torchscript" else "model.onnx")
    assert report["detections"] == 100
    assert report["max_box_diff"] <= 1e-3 and report["max_score_diff"] <= 1e-4 and report["classes_equal"]
    other = report["other_size"]
    assert other["size"] != [128, 128] and other["max_box_diff"] <= 1e-3 and other["classes_equal"]
    saved = json.loads((out / "export_check.json").read_text())
    assert saved["outputs"][-1] == "image_size"
    assert ("pred_box_std" in saved["outputs"]) == keep


def test_scripting_is_refused_clearly(setup):
    tmp, tool = setup
    with pytest.raises(SystemExit, match="scripting is not supported for GFL"):
        tool.main(["--config-file", CONFIG, "--export-method", "scripting", "--output", str(tmp / "s")])
