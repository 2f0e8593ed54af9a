"""
The authors' GFL V2 checkpoints (implus/GFocalV2): every key, shape and dtype
of their released detectors' state dicts (tests/fixtures/gfocalv2_state_dicts.json,
recorded by make_gfocalv2_fixture.py from the authors' own code) converts and
loads strictly into the V2 configs.
"""

import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from gfl_d2.convert import ConversionError, convert_mmdet_state_dict

from .mmdet_gfl_reference import GFOCALV2_FIXTURE, mmdet_gfl_state_dict, mmdet_state_dict_layout
from .repo import ROOT


@pytest.mark.parametrize(
    "name, config, depth",
    [
        ("R-50 1x", "COCO-Detection/gflv2_R_50_FPN_1x.py", 50),
        ("R-50 ms2x", "COCO-Detection/gflv2_R_50_FPN_1x.py", 50),  # the same weights' layout
        ("R-101 ms2x", "COCO-Detection/gflv2_R_101_FPN_ms2x.py", 101),
    ],
)
def test_authors_v2_checkpoints_convert_and_load_strictly(name, config, depth):
    layout = [k for k, _, _ in mmdet_state_dict_layout(name, GFOCALV2_FIXTURE)]
    assert {
        "bbox_head.reg_conf.0.weight",
        "bbox_head.reg_conf.2.bias",
        "bbox_head.integral.project",
    } <= set(layout)
    sd = mmdet_gfl_state_dict(name, fixture=GFOCALV2_FIXTURE)
    converted, info = convert_mmdet_state_dict(sd, {"CLASSES": tuple(f"c{i}" for i in range(80))})
    assert (info["version"], info["config"], info["depth"], info["num_classes"]) == (
        2,
        config,
        depth,
        80,
    )
    assert (info["dgqp_statistics"], info["dgqp_channels"]) == (20, 64)
    model = instantiate(LazyConfig.load(os.path.join(ROOT, "configs", config)).model)
    model.load_state_dict(converted, strict=True)
    state = model.state_dict()
    for old, new in info["mapping"].items():
        expected = sd[old][:80] if old.startswith("bbox_head.gfl_cls.") else sd[old]
        assert torch.equal(state[new], expected), old
    assert set(info["mapping"]) | {k for k in info["dropped"] if k in sd} == set(sd)
    assert "background channel" in info["dropped"]["bbox_head.gfl_cls.weight[80]"]
    assert state["head.dgqp.layers.0.weight"].shape == (64, 20, 1, 1)


def test_v2_checkpoint_with_another_class_count_is_refused():
    sd = mmdet_gfl_state_dict("R-50 1x", fixture=GFOCALV2_FIXTURE)
    with pytest.raises(ConversionError, match="81 channels and the checkpoint names 81 classes"):
        convert_mmdet_state_dict(sd, {"CLASSES": tuple(f"c{i}" for i in range(81))})
    del sd["bbox_head.reg_conf.2.weight"]
    with pytest.raises(ConversionError, match="without \\['bbox_head.reg_conf.2.weight'\\]"):
        convert_mmdet_state_dict(sd)


def test_tool_converts_an_authors_v2_checkpoint_file(tmp_path):
    """
    As the authors' MMDetection 2.x runner saves it: meta with the class names, the state dict.
    """
    from detectron2.checkpoint import DetectionCheckpointer

    from .repo import run_tool

    sd = mmdet_gfl_state_dict("R-101 ms2x", fixture=GFOCALV2_FIXTURE)
    src, dst = tmp_path / "gfocal_r101_fpn_ms2x.pth", tmp_path / "gflv2_r101.pth"
    torch.save(
        {"meta": {"CLASSES": tuple(f"class{i}" for i in range(80)), "epoch": 24}, "state_dict": sd},
        src,
    )
    printed = run_tool(["tools/convert_mmdet_checkpoint.py", src, dst]).stdout
    assert "GFL V2, ResNet-101" in printed and "80 classes" in printed
    assert "use it with configs/COCO-Detection/gflv2_R_101_FPN_ms2x.py" in printed
    assert (
        "quality predictor: 20 statistics -> 64 -> 1" in printed
        and "background channel of gfl_cls" in printed
    )
    model = instantiate(
        LazyConfig.load(
            os.path.join(ROOT, "configs", "COCO-Detection", "gflv2_R_101_FPN_ms2x.py")
        ).model
    )
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    assert (
        not incompatible.missing_keys
        and not incompatible.unexpected_keys
        and not incompatible.incorrect_shapes
    )
