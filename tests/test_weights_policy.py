"""
One policy for the weights a detector is evaluated, exported or run with
(``gfl_d2.checkpoint.load_trained_weights``): every tensor outside the backbone
must load, and an MMDetection checkpoint is sent to the converter, in the
library and through the tools as a user runs them.
"""

import pytest
import torch

from gfl_d2.checkpoint import load_trained_weights
from gfl_d2.errors import WeightsError
from gfl_d2.export import export
from gfl_d2.lazy_config import load_lazy_config
from gfl_d2.model_zoo import DEFAULT_CONFIG
from gfl_d2.predictor import LazyPredictor
from gfl_d2.testing import tiny_gfl

from .repo import run_tool


def mmdet_checkpoint(path):
    """A file in the layout MMDetection saves: ``state_dict`` of its module names, and ``meta``."""
    t = torch.zeros(2, 2)
    state = {
        "backbone.conv1.weight": t,
        "neck.lateral_convs.0.conv.weight": t,
        "bbox_head.gfl_cls.weight": t,
    }
    torch.save({"state_dict": state, "meta": {"mmdet_version": "3.3.0"}}, path)
    return path


def test_an_mmdetection_checkpoint_is_sent_to_the_converter(tmp_path):
    for wrapped in (True, False):
        path = tmp_path / f"mmdet_{wrapped}.pth"
        mmdet_checkpoint(path)
        if not wrapped:  # a bare state dict of MMDetection's names
            torch.save(torch.load(path)["state_dict"], path)
        with pytest.raises(WeightsError, match=r"MMDetection checkpoint.*convert_mmdet_checkpoint"):
            load_trained_weights(tiny_gfl(), str(path))


def test_weights_without_the_head_are_refused_by_every_consumer(tmp_path):
    model = tiny_gfl()
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    torch.save({"model": model.state_dict()}, tmp_path / "whole.pth")
    with pytest.raises(WeightsError, match=r"holds no trained weights for \d+ tensor\(s\)"):
        load_trained_weights(tiny_gfl(), str(tmp_path / "backbone.pth"))
    with pytest.raises(WeightsError, match="no weights given"):
        load_trained_weights(tiny_gfl(), "")
    with pytest.raises(WeightsError, match="checkpoint not found"):
        load_trained_weights(tiny_gfl(), str(tmp_path / "none.pth"))
    loaded = tiny_gfl(num_classes=3)
    load_trained_weights(loaded, str(tmp_path / "whole.pth"))  # the whole detector: fine
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    cfg = load_lazy_config(DEFAULT_CONFIG, [f"train.init_checkpoint={tmp_path / 'backbone.pth'}"])
    with pytest.raises(WeightsError, match="holds no trained weights"):
        LazyPredictor(cfg)  # the demo's and the studies' predictor
    with pytest.raises(WeightsError, match="holds no trained weights"):
        export(cfg, str(tmp_path / "export"))


def test_the_demo_given_an_unconverted_mmdetection_checkpoint_says_to_convert_it(tmp_path):
    weights = mmdet_checkpoint(tmp_path / "gfl_r50_fpn_1x_coco.pth")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (90, 120, 150)).save(image)
    proc = run_tool(
        [
            "tools/demo.py",
            "--input",
            image,
            "--output",
            tmp_path / "drawn",
            f"train.init_checkpoint={weights}",
            "train.device=cpu",
        ],
        datasets=tmp_path / "datasets",
        check=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "is an MMDetection checkpoint" in proc.stderr
    assert "python tools/convert_mmdet_checkpoint.py" in proc.stderr
    assert not (tmp_path / "drawn").exists() or not any((tmp_path / "drawn").iterdir())
