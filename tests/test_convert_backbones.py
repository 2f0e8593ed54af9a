"""
The converter on every released architecture's state dict as MMDetection 3.3
saves it (keys, shapes and dtypes recorded in tests/fixtures from models
MMDetection built from its own configs): deformable ResNet/ResNeXt, the LD
students' ResNet-18/34, GFocalV2's Res2Net-101-DCN, the ImageNet starting
points; and the authors' V1 fork, refused with the model to use instead.
"""

import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from gfl_d2.convert import ConversionError, convert_checkpoint, convert_mmdet_state_dict
from gfl_d2.convert_backbone import backbone_name

from .mmdet_gfl_reference import GFOCALV2_FIXTURE, mmdet_gfl_state_dict
from .repo import ROOT, run_tool


def build(config, overrides=()):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", config))
    return instantiate(LazyConfig.apply_overrides(cfg, list(overrides)).model)


def assert_loads_exactly(model, converted, info):
    model.load_state_dict(converted, strict=True)
    state = model.state_dict()
    for old, new in info["mapping"].items():
        assert torch.equal(state[new], converted[new]), old


@pytest.mark.parametrize(
    "name, config, backbone",
    [
        (
            "R-101-DCN ms2x",
            "COCO-Detection/gfl_R_101_FPN_dconv_c3_c5_ms2x.py",
            "ResNet-101 + DCN c3-c5",
        ),
        (
            "X-101-32x4d-DCN ms2x",
            "COCO-Detection/gfl_X_101_32x4d_FPN_dconv_c4_c5_ms2x.py",
            "ResNeXt-101 32x4d + DCN c4-c5",
        ),
        ("LD R-18 student", "COCO-Detection/Distillation/ld_R_18_gfl_R_101_FPN_1x.py", "ResNet-18"),
        ("LD R-34 student", "COCO-Detection/Distillation/ld_R_34_gfl_R_101_FPN_1x.py", "ResNet-34"),
    ],
)
def test_released_layouts_convert_and_load_strictly(name, config, backbone):
    sd = mmdet_gfl_state_dict(name)
    converted, info = convert_mmdet_state_dict(sd)
    assert (info["config"], info["overrides"]) == (config, [])
    assert info["deform_modulated"] is False and info["deform_num_groups"] == 1
    assert backbone_name(info) == backbone
    assert_loads_exactly(build(config), converted, info)
    assert set(info["mapping"]) | set(info["dropped"]) == set(sd)
    offsets = [k for k in converted if "offset" in k]
    assert len(offsets) == (60 if "R-101-DCN" in name else 52 if "DCN" in name else 0)


def gfocalv2_res2net_101_dcn():
    """
    GFocalV2's ``gfocal_r2n101_dcn_fpn_ms2x`` layout: MMDetection's Res2Net-101-DCN backbone
    (c4-c5) with the authors' V2 neck and head (the R-101 release's, recorded from their code).
    """
    backbone = mmdet_gfl_state_dict("Res2Net-101-DCN")
    head = mmdet_gfl_state_dict("R-101 ms2x", fixture=GFOCALV2_FIXTURE)
    sd = {k: v for k, v in backbone.items() if k.startswith("backbone.")}
    sd.update({k: v for k, v in head.items() if not k.startswith("backbone.")})
    return sd


def test_gfocalv2_res2net_101_dcn_converts_and_loads_strictly():
    sd = gfocalv2_res2net_101_dcn()
    assert "backbone.layer4.2.convs.2.conv_offset.weight" in sd and "backbone.stem.7.bias" in sd
    converted, info = convert_mmdet_state_dict(sd)
    config = "COCO-Detection/gflv2_Res2Net_101_FPN_dconv_c4_c5_ms2x.py"
    assert (info["config"], info["overrides"], info["version"]) == (config, [], 2)
    assert (info["kind"], info["scales"], info["base_width"]) == ("res2net", 4, 26)
    assert info["deform_on_per_stage"] == [False, False, True, True]
    model = build(config)
    sd_keys = set(model.state_dict())
    assert "backbone.bottom_up.res5.2.convs_offset.2.weight" in sd_keys
    assert_loads_exactly(model, converted, info)
    # every split conv of res4/res5 is deformable, none of res2/res3
    offsets = {k.split(".")[2] for k in converted if "convs_offset" in k}
    assert offsets == {"res4", "res5"}


def test_modulated_and_grouped_offsets_become_overrides():
    sd = mmdet_gfl_state_dict("R-101-DCN ms2x")
    for key in [k for k in sd if "conv_offset" in k]:
        sd[key] = torch.zeros((27,) + tuple(sd[key].shape[1:]))
    converted, info = convert_mmdet_state_dict(sd)
    assert info["deform_modulated"] is True
    assert info["overrides"] == [
        "model.backbone.bottom_up.stages.deform_modulated=True",
        "model.backbone.bottom_up.stages.deform_num_groups=1",
    ]
    assert_loads_exactly(build(info["config"], info["overrides"]), converted, info)
    for key in [k for k in sd if "conv_offset" in k]:
        sd[key] = torch.zeros((54,) + tuple(sd[key].shape[1:]))
    with pytest.raises(ConversionError, match="54 channels: neither 2 \\* 9 .* or both"):
        convert_mmdet_state_dict(sd)


def test_authors_v1_fork_is_refused_with_mmdetections_model_of_the_same_backbone():
    sd = mmdet_gfl_state_dict("X-101-32x4d-DCN ms2x")
    sd["bbox_head.distribution_project.project"] = sd.pop("bbox_head.integral.project")
    with pytest.raises(ConversionError) as e:
        convert_mmdet_state_dict(sd)
    message = str(e.value)
    assert "implus/GFocal" in message and "(stride - 1) / 2" in message and "'+1'" in message
    assert "gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco (48.1 AP)" in message
    sd = mmdet_gfl_state_dict("R-50 1x")
    sd["bbox_head.distribution_project.project"] = sd.pop("bbox_head.integral.project")
    with pytest.raises(ConversionError, match="gfl_r50_fpn_1x_coco \\(40.2 AP\\)"):
        convert_mmdet_state_dict(sd)


@pytest.mark.parametrize(
    "name, configs",
    [
        ("ImageNet R-101", ["gfl_R_101_FPN_dconv_c3_c5_ms2x.py", "gfl_R_101_FPN_ms2x.py"]),
        ("ImageNet R-18", ["Distillation/ld_R_18_gfl_R_101_FPN_1x.py"]),
        ("ImageNet Res2Net-101", ["gflv2_Res2Net_101_FPN_dconv_c4_c5_ms2x.py"]),
    ],
)
def test_imagenet_starting_points_convert_for_training(tmp_path, name, configs):
    from detectron2.checkpoint import DetectionCheckpointer

    src, dst = tmp_path / "imagenet.pth", tmp_path / "backbone.pth"
    sd = mmdet_gfl_state_dict(name)
    torch.save(sd, src)
    printed = run_tool(["tools/convert_mmdet_checkpoint.py", src, dst]).stdout
    assert f"train.init_checkpoint={dst}" in printed
    assert ("the ImageNet classifier" in printed) == ("fc.weight" in sd)
    for config in configs:
        assert f"configs/COCO-Detection/{config}" in printed
    model = build(f"COCO-Detection/{configs[0]}")
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    # the backbone loads whole; only the FPN, the head and the offset convs (zero) are left
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    assert {k.split(".")[0] for k in incompatible.missing_keys} <= {"backbone", "head"}
    left = [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert all("offset" in k for k in left)
    assert ("offset" in " ".join(left)) == ("dconv" in configs[0])


def test_backbone_with_partly_deformable_stage_is_refused(tmp_path):
    sd = mmdet_gfl_state_dict("R-101-DCN ms2x")
    del sd["backbone.layer2.1.conv2.conv_offset.weight"]
    with pytest.raises(ConversionError, match="layer2 has deformable convs in 3 of its 4"):
        convert_mmdet_state_dict(sd)
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    torch.save({"state_dict": sd}, src)
    with pytest.raises(ConversionError):
        convert_checkpoint(str(src), str(dst))
    assert not dst.exists()


def test_other_deformable_stages_become_an_override():
    """GFocalV2's README says c3-c5 for its X-101-DCN, its config c4-c5: either converts."""
    sd = mmdet_gfl_state_dict("X-101-32x4d-DCN ms2x")
    layer2 = [k for k in mmdet_gfl_state_dict("R-101-DCN ms2x") if "layer2." in k and "offset" in k]
    for key in layer2:
        weight = key.endswith("weight")
        sd[key] = torch.zeros((18, 256, 3, 3) if weight else (18,))
    converted, info = convert_mmdet_state_dict(sd)
    assert info["config"] == "COCO-Detection/gfl_X_101_32x4d_FPN_dconv_c4_c5_ms2x.py"
    assert info["overrides"] == [
        "model.backbone.bottom_up.stages.deform_on_per_stage=[False,True,True,True]"
    ]
    assert_loads_exactly(build(info["config"], info["overrides"]), converted, info)
