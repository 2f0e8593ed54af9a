"""
MMDetection GFL checkpoints -> gfl-d2: key mapping, strict loading, same function.

The state dicts have exactly the keys, shapes and dtypes MMDetection 3.3 saves
(tests/fixtures/mmdet_gfl_state_dicts.json, made by MMDetection itself);
test_convert_mmdet_e2e.py compares with the real library where it is installed.
"""

import argparse
import logging
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.convert import (
    ConversionError,
    convert_checkpoint,
    convert_mmdet_state_dict,
    load_mmdet_checkpoint,
)

from .mmdet_gfl_reference import mmdet_gfl_state_dict, mmdet_state_dict_layout, reference_forward
from .repo import ROOT, run_tool


def build(config):
    return instantiate(LazyConfig.load(os.path.join(ROOT, "configs", config)).model).eval()


@pytest.fixture(scope="module")
def r50():
    return mmdet_gfl_state_dict("R-50 1x")


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
    # every key MMDetection saves is either mapped or dropped with a reason
    assert set(info["mapping"]).isdisjoint(info["dropped"])
    assert set(info["mapping"]) | set(info["dropped"]) == set(r50)
    counters = {k for k in r50 if k.endswith("num_batches_tracked")}
    assert set(info["dropped"]) == counters | {"bbox_head.integral.project"}
    assert "0..16" in info["dropped"]["bbox_head.integral.project"]


@pytest.mark.parametrize(
    "name, config, depth, groups",
    [
        ("R-50 1x", "COCO-Detection/gfl_R_50_FPN_1x.py", 50, 1),
        (
            "R-50 ms2x",
            "COCO-Detection/gfl_R_50_FPN_1x.py",
            50,
            1,
        ),  # same weights layout: any R-50 config
        ("R-101 ms2x", "COCO-Detection/gfl_R_101_FPN_ms2x.py", 101, 1),
        ("X-101-32x4d ms2x", "COCO-Detection/gfl_X_101_32x4d_FPN_ms2x.py", 101, 32),
    ],
)
def test_every_released_architecture_converts_and_loads_strictly(name, config, depth, groups):
    layout = mmdet_state_dict_layout(name)
    assert "bbox_head.integral.project" in [k for k, _, _ in layout]  # what the last round missed
    sd = mmdet_gfl_state_dict(name)
    converted, info = convert_mmdet_state_dict(sd)
    assert (info["config"], info["depth"], info["num_groups"]) == (config, depth, groups)
    model = build(config)
    model.load_state_dict(converted, strict=True)
    for key, new in info["mapping"].items():
        assert model.state_dict()[new].dtype == sd[key].dtype, key


@pytest.mark.parametrize(
    "bins, message",
    [
        (torch.arange(17) * 0.5, r"bin values \[0.0, 0.5, 1.0"),  # another bin width
        (torch.arange(9, dtype=torch.float32), r"shape \(9,\)"),  # another n
        (torch.arange(1, 18, dtype=torch.float32), "another bin layout"),
    ],
)
def test_integral_buffer_with_other_bins_is_refused_with_the_reason(r50, bins, message):
    sd = dict(r50)
    sd["bbox_head.integral.project"] = bins
    with pytest.raises(ConversionError, match=message) as e:
        convert_mmdet_state_dict(sd)
    assert "n = 16" in str(e.value) and "another bin layout" in str(e.value)


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


def test_resnext_function(tmp_path):
    sd = mmdet_gfl_state_dict("X-101-32x4d ms2x", seed=1)
    converted, info = convert_mmdet_state_dict(sd)
    model = build(info["config"])
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 64, 64)
    ref_feats, _, _ = reference_forward(sd, x, depth=101, groups=32)
    with torch.no_grad():
        feats = model.backbone(x)
    for name, ref in zip(model.head_in_features, ref_feats):
        torch.testing.assert_close(feats[name], ref, rtol=1e-4, atol=1e-4)


def test_tool_writes_a_checkpoint_detectron2_loads(tmp_path, r50):
    src, dst = tmp_path / "gfl_r50_fpn_1x_coco.pth", tmp_path / "out" / "converted.pth"
    torch.save({"state_dict": r50, "meta": {"CLASSES": ["person"] * 80}}, src)
    proc = run_tool(["tools/convert_mmdet_checkpoint.py", src, dst])
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = proc.stdout
    assert "ResNet-50" in printed and "configs/COCO-Detection/gfl_R_50_FPN_1x.py" in printed
    assert "backbone: " in printed and "bbox_head: " in printed
    assert "dropped bbox_head.integral.project: the integral's bins 0..16" in printed
    model = build("COCO-Detection/gfl_R_50_FPN_1x.py")
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    assert (
        not incompatible.missing_keys
        and not incompatible.unexpected_keys
        and not incompatible.incorrect_shapes
    )
    # a refusal: exit status 1, the reason on stderr, no output file
    src.write_bytes(b"\x00garbage")
    proc = run_tool(["tools/convert_mmdet_checkpoint.py", src, tmp_path / "other.pth"], check=False)
    assert proc.returncode == 1 and "cannot be read as a PyTorch checkpoint" in proc.stderr
    assert not (tmp_path / "other.pth").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.update({"backbone.layer2.0.conv2.conv_offset.weight": torch.zeros(1)}),
            "deformable convs in 1 of its 4",
        ),
        (
            lambda sd: (
                [sd.pop(k) for k in list(sd) if k.startswith("bbox_head.gfl_")]
                and sd.update({"bbox_head.retina_cls.weight": torch.zeros(1)})
            ),
            "not a GFL checkpoint",
        ),
        (
            lambda sd: sd.update({"neck.fpn_convs.5.conv.weight": torch.zeros(1)}),
            "has 6 output convs",
        ),
        (lambda sd: sd.update({"bbox_head.extra.weight": torch.zeros(1)}), "has no counterpart"),
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("backbone.")],
            "not an MMDetection detector",
        ),
    ],
)
def test_refuses_what_it_does_not_understand(tmp_path, r50, edit, message):
    sd = dict(r50)
    edit(sd)
    with pytest.raises(ConversionError, match=message):
        convert_mmdet_state_dict(sd)
    src, dst = tmp_path / "src.pth", tmp_path / "dst.pth"
    torch.save({"state_dict": sd}, src)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(str(src), str(dst))
    assert not dst.exists() and os.listdir(tmp_path) == ["src.pth"]


def test_unreadable_source(tmp_path):
    src = tmp_path / "broken.pth"
    src.write_bytes(b"\x00garbage")
    with pytest.raises(ConversionError, match="cannot be read as a PyTorch checkpoint"):
        convert_checkpoint(str(src), str(tmp_path / "dst.pth"))


def test_checkpoint_that_pickles_objects_needs_allow_pickle(tmp_path, r50, caplog):
    src, dst = tmp_path / "trained.pth", tmp_path / "converted.pth"
    # an object torch's weights-only loader does not restore, as mmengine's log history is
    torch.save({"state_dict": r50, "meta": {"args": argparse.Namespace(lr=0.01)}}, src)
    with pytest.raises(ConversionError) as e:
        convert_checkpoint(str(src), str(dst))
    assert (
        "argparse.Namespace" in str(e.value)
        and "--allow-pickle" in str(e.value)
        and "runs code" in str(e.value)
    )
    assert not dst.exists()
    with caplog.at_level(logging.WARNING, logger="gfl_d2.convert"):
        convert_checkpoint(str(src), str(dst), allow_pickle=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and "arbitrary code" in warnings[0]
        and "argparse.Namespace" in warnings[0]
    )
    model = build("COCO-Detection/gfl_R_50_FPN_1x.py")
    model.load_state_dict(torch.load(dst, weights_only=True)["model"], strict=True)


def test_plain_checkpoint_loads_without_allow_pickle(tmp_path, r50, caplog):
    src = tmp_path / "released.pth"
    torch.save({"state_dict": r50, "meta": {"CLASSES": ("person",) * 80, "epoch": 12}}, src)
    with caplog.at_level(logging.WARNING):
        state, meta = load_mmdet_checkpoint(str(src))
    assert not caplog.records and meta["epoch"] == 12 and set(state) == set(r50)


def test_allow_pickle_names_a_missing_package(tmp_path, r50):
    """
    A checkpoint saved by a training run pickles objects of its framework (mmengine), which may
    be absent.
    """
    (tmp_path / "trainingframework").mkdir()
    (tmp_path / "trainingframework" / "__init__.py").write_text("class LogHistory:\n    pass\n")
    weights, src = tmp_path / "weights.pth", tmp_path / "epoch_12.pth"
    torch.save(r50, weights)
    # saved by another process, where the framework is installed; this one does not have it
    save = (
        "import sys, torch, trainingframework; "
        "torch.save({'state_dict': torch.load(sys.argv[1]), "
        "'message_hub': trainingframework.LogHistory()}, sys.argv[2])"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    subprocess.run(
        [sys.executable, "-c", save, str(weights), str(src)], env=env, check=True, timeout=120
    )
    with pytest.raises(
        ConversionError, match="objects of the package 'trainingframework', which is not installed"
    ):
        convert_checkpoint(str(src), str(tmp_path / "out.pth"), allow_pickle=True)
