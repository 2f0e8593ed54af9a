"""MMDetection GFL checkpoints -> gfl-d2: key mapping, strict loading, same function."""
import importlib.util
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.convert import ConversionError, convert_mmdet_state_dict
from mmdet_gfl_reference import mmdet_gfl_state_dict, reference_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(config):
    return instantiate(LazyConfig.load(os.path.join(ROOT, "configs", config)).model).eval()


def load_tool():
    spec = importlib.util.spec_from_file_location("convert_tool", os.path.join(ROOT, "tools", "convert_mmdet_checkpoint.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="module")
def r50():
    return mmdet_gfl_state_dict(depth=50)


def test_r50_converts_and_loads_strictly_tensor_by_tensor(r50):
    converted, info = convert_mmdet_state_dict(r50)
    assert info["config"] == "COCO-Detection/gfl_R_50_FPN_1x.py"
    assert (info["depth"], info["num_classes"], info["reg_max"]) == (50, 80, 16)
    model = build(info["config"])
    model.load_state_dict(converted, strict=True)
    state = model.state_dict()
    assert len(info["mapping"]) == len(state)
    for old, new in info["mapping"].items():
        assert torch.equal(state[new], r50[old]), old
    assert all(k.endswith("num_batches_tracked") for k in info["dropped"])
    assert len(info["dropped"]) == sum(1 for k in r50 if k.endswith("num_batches_tracked"))


def test_converted_model_computes_the_same_function(r50):
    converted, info = convert_mmdet_state_dict(r50)
    model = build(info["config"])
    model.load_state_dict(converted, strict=True)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 96, 160)  # already normalised, divisible by 32
    ref_feats, ref_cls, ref_reg = reference_forward(r50, x)
    with torch.no_grad():
        feats = model.backbone(x)
        feats = [feats[f] for f in model.head_in_features]
        cls, reg = model.head(feats)
    for a, b in zip(feats, ref_feats):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(cls + reg, ref_cls + ref_reg):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_resnext_and_r101_are_recognised_and_load():
    for depth, groups, width, config in [
        (101, 32, 4, "COCO-Detection/gfl_X_101_32x4d_FPN_ms2x.py"),
        (101, 1, 64, "COCO-Detection/gfl_R_101_FPN_ms2x.py"),
    ]:
        sd = mmdet_gfl_state_dict(depth=depth, groups=groups, width=width)
        converted, info = convert_mmdet_state_dict(sd)
        assert info["config"] == config and info["num_groups"] == groups
        build(config).load_state_dict(converted, strict=True)


def test_resnext_function(tmp_path):
    sd = mmdet_gfl_state_dict(depth=101, groups=32, width=4, seed=1)
    converted, info = convert_mmdet_state_dict(sd)
    model = build(info["config"])
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 64)
    ref_feats, _, _ = reference_forward(sd, x, depth=101, groups=32)
    with torch.no_grad():
        feats = model.backbone(x)
    for name, ref in zip(model.head_in_features, ref_feats):
        torch.testing.assert_close(feats[name], ref, rtol=1e-4, atol=1e-4)


def test_tool_writes_a_checkpoint_detectron2_loads(tmp_path, r50, capsys):
    src, dst = tmp_path / "gfl_r50_fpn_1x_coco.pth", tmp_path / "out" / "converted.pth"
    torch.save({"state_dict": r50, "meta": {"CLASSES": ["person"] * 80}}, src)
    assert load_tool().main([str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "ResNet-50" in printed and "configs/COCO-Detection/gfl_R_50_FPN_1x.py" in printed
    assert "backbone: " in printed and "bbox_head: " in printed
    model = build("COCO-Detection/gfl_R_50_FPN_1x.py")
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=False))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys and not incompatible.incorrect_shapes


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update({"backbone.layer2.0.conv2.conv_offset.weight": torch.zeros(1)}), "deformable convolutions"),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("bbox_head.gfl_")] and
         sd.update({"bbox_head.retina_cls.weight": torch.zeros(1)}), "not a GFL checkpoint"),
        (lambda sd: sd.update({"neck.fpn_convs.5.conv.weight": torch.zeros(1)}), "has 6 output convs"),
        (lambda sd: sd.update({"bbox_head.extra.weight": torch.zeros(1)}), "has no counterpart"),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("backbone.")], "not an MMDetection detector"),
    ],
)
def test_refuses_what_it_does_not_understand(tmp_path, r50, capsys, edit, message):
    sd = dict(r50)
    edit(sd)
    with pytest.raises(ConversionError, match=message):
        convert_mmdet_state_dict(sd)
    src, dst = tmp_path / "src.pth", tmp_path / "dst.pth"
    torch.save({"state_dict": sd}, src)
    assert load_tool().main([str(src), str(dst)]) == 1
    assert message in capsys.readouterr().err
    assert not dst.exists() and os.listdir(tmp_path) == ["src.pth"]


def test_unreadable_source(tmp_path, capsys):
    src = tmp_path / "broken.pth"
    src.write_bytes(b"\x00garbage")
    assert load_tool().main([str(src), str(tmp_path / "dst.pth")]) == 1
    assert "cannot be read as a PyTorch checkpoint" in capsys.readouterr().err
