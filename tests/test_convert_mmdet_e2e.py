"""
The converter on checkpoints written by the real MMDetection, compared with
MMDetection's own detections on the same image.

Skipped unless MMDetection 3.3 is importable (it is not installed by
tools/install.sh); run before touching the converter:

    pip install mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0
    python -m pytest tests/test_convert_mmdet_e2e.py
"""

import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.convert import ConversionError, convert_checkpoint
from gfl_d2.cpu_inference import FrozenCPUDetector
from gfl_studies.mmdet_runtime import (
    MMDET_CONFIGS,
    build_mmdet_gfl,
    mmdet_available,
    mmdet_sample,
    save_as_mmdet,
    trained_like,
)

from .repo import ROOT

pytestmark = pytest.mark.skipif(
    not mmdet_available(), reason="MMDetection (mmdet, mmengine, mmcv) is not installed"
)


def mmdet_detections(model, image_bgr):
    h, w = image_bgr.shape[1:]
    sample = mmdet_sample(h, w)
    with torch.no_grad():
        pred = model.test_step({"inputs": [image_bgr], "data_samples": [sample]})[0].pred_instances
    return pred.bboxes, pred.scores, pred.labels


@pytest.mark.parametrize("name", ["R-50 1x", "X-101-32x4d ms2x"])
def test_converted_mmdet_checkpoint_gives_mmdetections_detections(tmp_path, name):
    mm_model, _ = build_mmdet_gfl(MMDET_CONFIGS[name])
    trained_like(mm_model)
    src, dst = tmp_path / "mmdet.pth", tmp_path / "converted.pth"
    save_as_mmdet(mm_model, src)

    report = convert_checkpoint(str(src), str(dst))
    config = report[-1].rsplit("use it with configs/", 1)[1].split()[0]
    model = instantiate(LazyConfig.load(os.path.join(ROOT, "configs", config)).model).eval()
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    assert (
        not incompatible.missing_keys
        and not incompatible.unexpected_keys
        and not incompatible.incorrect_shapes
    )

    g = torch.Generator().manual_seed(1)
    h, w = 300, 450  # not a multiple of 32: both pad to 320x480 and clip to 300x450
    image_bgr = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    boxes, scores, labels = mmdet_detections(mm_model, image_bgr)
    assert len(scores) == 100  # enough detections to compare

    # CPU inference, eager and frozen: both ways give MMDetection's detections
    for runner in (model, FrozenCPUDetector(model).eval()):
        with torch.no_grad():
            ours = runner([{"image": image_bgr.flip(0).float(), "height": h, "width": w}])[0][
                "instances"
            ]
        assert len(ours) == len(scores)
        torch.testing.assert_close(ours.scores, scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(ours.pred_classes, labels)
        torch.testing.assert_close(ours.pred_boxes.tensor, boxes, rtol=1e-4, atol=1e-2)


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
