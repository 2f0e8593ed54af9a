"""
Localization Distillation against the real MMDetection: its own LD config
(``configs/ld/ld_r50-gflv1-r101_fpn_1x_coco.py``: an R-50 GFL student, an
R-101 GFL teacher, ``LDHead`` with ``KnowledgeDistillationKLDivLoss``) and
gfl-d2's student with the same two models' weights (converted by the
project's converter), on the same images and ground truth: the same losses,
and the same gradient of the LD loss on the student's box layer.

Skipped unless MMDetection 3.3 is importable (it is not installed by
tools/install.sh); run before touching distillation:

    pip install mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0
    python -m pytest tests/test_distillation_mmdet_e2e.py
"""

import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage

from gfl_d2.convert import convert_checkpoint
from gfl_d2.model_zoo import get_config_file
from gfl_d2.modeling import LocalizationDistiller
from gfl_d2.teacher import build_teacher
from gfl_d2.testing import make_instances
from gfl_studies.mmdet_runtime import (
    MMDET_CONFIGS,
    build_mmdet_gfl,
    import_mmdet,
    mmdet_available,
    mmdet_sample,
    save_as_mmdet,
    trained_like,
)

pytestmark = pytest.mark.skipif(
    not mmdet_available(), reason="MMDetection (mmdet, mmengine, mmcv) is not installed"
)

LD_CONFIG = "ld/ld_r50-gflv1-r101_fpn_1x_coco.py"


def converted_config(report):
    return report[-1].rsplit("use it with configs/", 1)[1].split()[0]


def build_mmdet_ld(teacher_ckpt: str):
    """MMDetection's LD detector from its own config, the teacher read from ``teacher_ckpt``."""
    mmdet = import_mmdet()
    from mmdet.registry import MODELS
    from mmengine.config import Config

    configs = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    cfg = Config.fromfile(os.path.join(configs, LD_CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.model.teacher_config = os.path.join(configs, MMDET_CONFIGS["R-101 ms2x"])
    cfg.model.teacher_ckpt = teacher_ckpt
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    trained_like(model, seed=0)
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ld")
    teacher_mm, _ = build_mmdet_gfl(MMDET_CONFIGS["R-101 ms2x"], seed=1)
    trained_like(teacher_mm, seed=1)
    save_as_mmdet(teacher_mm, tmp / "teacher_mmdet.pth")
    theirs = build_mmdet_ld(str(tmp / "teacher_mmdet.pth"))
    save_as_mmdet(
        theirs, tmp / "student_mmdet.pth"
    )  # the teacher is not in the student's state dict

    teacher_cfg = converted_config(
        convert_checkpoint(str(tmp / "teacher_mmdet.pth"), str(tmp / "teacher.pth"))
    )
    student_cfg = converted_config(
        convert_checkpoint(str(tmp / "student_mmdet.pth"), str(tmp / "student.pth"))
    )
    model_cfg = LazyConfig.load(get_config_file(student_cfg)).model
    ours = instantiate(model_cfg)
    incompatible = DetectionCheckpointer(ours)._load_model(
        torch.load(tmp / "student.pth", weights_only=True)
    )
    assert (
        not incompatible.missing_keys
        and not incompatible.unexpected_keys
        and not incompatible.incorrect_shapes
    )
    teacher = build_teacher(get_config_file(teacher_cfg), str(tmp / "teacher.pth"))
    # MMDetection's LD config: loss_ld weight 0.25, T = 10
    ours_ld = LocalizationDistiller(ours, teacher, loss_weight=0.25, temperature=10.0)
    return ours_ld, theirs


def batch():
    g = torch.Generator().manual_seed(3)
    h, w = 192, 256
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for _ in range(2)]
    gts = [
        (
            [[10.0, 20.0, 120.0, 150.0], [130.0, 40.0, 250.0, 100.0], [60.0, 90.0, 100.0, 130.0]],
            [3, 17, 3],
        ),
        ([[30.0, 30.0, 200.0, 180.0]], [56]),
    ]
    return images, gts, (h, w)


def test_losses_and_ld_gradient_equal_mmdetections(pair):
    ours, theirs = pair
    images, gts, size = batch()
    # MMDetection: its data preprocessor, then LDHead's losses (BatchNorm frozen in both:
    # norm_eval / FrozenBN)
    theirs.train()
    data = {
        "inputs": list(images),
        "data_samples": [mmdet_sample(*size, torch.tensor(b), torch.tensor(c)) for b, c in gts],
    }
    data = theirs.data_preprocessor(data, True)
    mm_losses = theirs.loss(data["inputs"], data["data_samples"])
    mm = {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in mm_losses.items()}
    (mm_ld_grad,) = torch.autograd.grad(
        mm["loss_ld"], theirs.bbox_head.gfl_reg.weight, retain_graph=True
    )

    ours.train()
    inputs = [
        {"image": im.flip(0), "instances": make_instances(b, c, size)}
        for im, (b, c) in zip(images, gts)
    ]
    with EventStorage():
        losses = ours(inputs)
    (ld_grad,) = torch.autograd.grad(
        losses["loss_ld"], ours.student.head.bbox_pred.weight, retain_graph=True
    )

    assert mm["loss_ld"].item() > 0
    names = {
        "loss_qfl": "loss_cls",
        "loss_bbox": "loss_bbox",
        "loss_dfl": "loss_dfl",
        "loss_ld": "loss_ld",
    }
    assert set(losses) == set(names)
    # both run in float32 with their own op order: features agree to ~1e-6 relative
    for ours_name, mm_name in names.items():
        torch.testing.assert_close(
            losses[ours_name], mm[mm_name], rtol=1e-4, atol=1e-6, msg=ours_name
        )
    torch.testing.assert_close(
        ld_grad, mm_ld_grad, rtol=1e-3, atol=1e-6 * mm_ld_grad.abs().max().item()
    )
