"""
The converter on checkpoints written by the real MMDetection, compared with
MMDetection's own detections on the same image.

Skipped unless MMDetection 3.3 is importable (it is not installed by
tools/install.sh); run before touching the converter:

    pip install mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0
    python -m pytest tests/test_convert_mmdet_e2e.py
"""

import os
import re

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.convert import ConversionError, convert_checkpoint
from gfl_d2.cpu_inference import FrozenCPUDetector
from gfl_studies.mmdet_runtime import (
    MMDET_CONFIGS,
    RES2NET_101_DCN,
    build_mmdet_gfl,
    mmdet_available,
    mmdet_sample,
    save_as_mmdet,
    trained_like,
)

from .repo import ROOT, run_tool

pytestmark = pytest.mark.skipif(
    not mmdet_available(), reason="MMDetection (mmdet, mmengine, mmcv) is not installed"
)


def mmdet_detections(model, image_bgr):
    h, w = image_bgr.shape[1:]
    sample = mmdet_sample(h, w)
    with torch.no_grad():
        pred = model.test_step({"inputs": [image_bgr], "data_samples": [sample]})[0].pred_instances
    return pred.bboxes, pred.scores, pred.labels


def converted_model(mm_model, tmp_path, tool=False):
    """
    ``mm_model`` saved as MMDetection saves it, converted (with the tool as a user runs it
    if ``tool``), built from the config (and overrides) the report names, loaded strictly.
    """
    src, dst = tmp_path / "mmdet.pth", tmp_path / "converted.pth"
    save_as_mmdet(mm_model, src)
    if tool:
        printed = run_tool(["tools/convert_mmdet_checkpoint.py", src, dst]).stdout
        config = printed.rsplit("use it with configs/", 1)[1].split()[0]
        overrides = re.findall(r" and (\S+=\S+)", printed.rsplit("use it with", 1)[1])
    else:
        report = convert_checkpoint(str(src), str(dst))
        config, overrides = report.config, report.overrides
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", config))
    model = instantiate(LazyConfig.apply_overrides(cfg, overrides).model).eval()
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    assert not (
        incompatible.missing_keys or incompatible.unexpected_keys or incompatible.incorrect_shapes
    )
    return model, config, overrides


def assert_same_detections(model, mm_model, frozen=True):
    g = torch.Generator().manual_seed(1)
    h, w = 300, 450  # not a multiple of 32: both pad to 320x480 and clip to 300x450
    image_bgr = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    boxes, scores, labels = mmdet_detections(mm_model, image_bgr)
    assert len(scores) == 100  # enough detections to compare
    # CPU inference, eager and frozen: both ways give MMDetection's detections
    for runner in (model, FrozenCPUDetector(model).eval()) if frozen else (model,):
        with torch.no_grad():
            ours = runner([{"image": image_bgr.flip(0).float(), "height": h, "width": w}])[0][
                "instances"
            ]
        assert len(ours) == len(scores)
        torch.testing.assert_close(ours.scores, scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(ours.pred_classes, labels)
        torch.testing.assert_close(ours.pred_boxes.tensor, boxes, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("name", ["R-50 1x", "X-101-32x4d ms2x"])
def test_converted_mmdet_checkpoint_gives_mmdetections_detections(tmp_path, name):
    mm_model, _ = build_mmdet_gfl(MMDET_CONFIGS[name])
    trained_like(mm_model)
    model, _, _ = converted_model(mm_model, tmp_path)
    assert_same_detections(model, mm_model)


def _offsets_move_samples(mm_model):
    """The offset convs were set off zero: the deformable convs do not compute a plain conv."""
    offsets = [m for n, m in mm_model.backbone.named_modules() if n.endswith("conv_offset")]
    return offsets and all(m.bias.abs().max() > 0.5 for m in offsets)


@pytest.mark.parametrize(
    "name, config",
    [
        ("R-101-DCN ms2x", "COCO-Detection/gfl_R_101_FPN_dconv_c3_c5_ms2x.py"),
        ("X-101-32x4d-DCN ms2x", "COCO-Detection/gfl_X_101_32x4d_FPN_dconv_c4_c5_ms2x.py"),
        ("LD R-18 student", "COCO-Detection/Distillation/ld_R_18_gfl_R_101_FPN_1x.py"),
    ],
)
def test_released_architectures_convert_with_the_tool_and_give_mmdetections_detections(
    tmp_path, name, config
):
    """The deformable ResNet/ResNeXt rows and an LD student, converted as the README says."""
    mm_model, _ = build_mmdet_gfl(MMDET_CONFIGS[name])
    trained_like(mm_model)
    assert "DCN" not in name or _offsets_move_samples(mm_model)
    model, used, overrides = converted_model(mm_model, tmp_path, tool=True)
    assert (used, overrides) == (config, [])
    assert_same_detections(model, mm_model, frozen=False)


def test_res2net_101_dcn_gives_mmdetections_detections(tmp_path):
    """
    GFocalV2's Res2Net-101-DCN backbone (c4-c5) on MMDetection 3.3's Res2Net, under
    MMDetection's GFL head: the V2 config with V1's quality branch.
    """
    mm_model, _ = build_mmdet_gfl(MMDET_CONFIGS["R-50 1x"], backbone=RES2NET_101_DCN)
    trained_like(mm_model)
    assert _offsets_move_samples(mm_model)
    model, used, overrides = converted_model(mm_model, tmp_path, tool=True)
    assert used == "COCO-Detection/gflv2_Res2Net_101_FPN_dconv_c4_c5_ms2x.py"
    assert overrides == ["model.head.quality=joint"]
    assert_same_detections(model, mm_model, frozen=False)


def test_checkpoint_saved_during_training_needs_allow_pickle(tmp_path):
    """A checkpoint of MMDetection's runner also pickles mmengine's log history (HistoryBuffer)."""
    from mmengine.logging import MessageHub

    mm_model, _ = build_mmdet_gfl()
    hub = MessageHub.get_instance("gfl_d2_test")
    hub.update_scalar("train/loss", 1.5, resumed=True)
    src, dst = tmp_path / "epoch_12.pth", tmp_path / "converted.pth"
    save_as_mmdet(mm_model, src, message_hub=hub.state_dict())

    with pytest.raises(ConversionError) as e:
        convert_checkpoint(str(src), str(dst))
    assert "mmengine.logging.history_buffer.HistoryBuffer" in str(
        e.value
    ) and "--allow-pickle" in str(e.value)
    assert not dst.exists()
    convert_checkpoint(str(src), str(dst), allow_pickle=True)
    assert dst.exists()


def test_converted_dcn_model_is_the_ld_teacher_of_its_config(tmp_path):
    """``ld_R_101_gfl_R_101_dconv_c3_c5_FPN_2x.py``: its teacher, MMDetection's R-101-DCN."""
    mm_model, _ = build_mmdet_gfl(MMDET_CONFIGS["R-101-DCN ms2x"])
    trained_like(mm_model)
    src, dst = tmp_path / "mmdet.pth", tmp_path / "teacher.pth"
    save_as_mmdet(mm_model, src)
    convert_checkpoint(str(src), str(dst))
    cfg = LazyConfig.load(
        os.path.join(
            ROOT, "configs/COCO-Detection/Distillation/ld_R_101_gfl_R_101_dconv_c3_c5_FPN_2x.py"
        )
    )
    cfg.distillation.teacher.checkpoint = str(dst)
    teacher = instantiate(cfg.distillation.teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert_same_detections(teacher, mm_model, frozen=False)
