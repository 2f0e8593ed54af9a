"""
Localization Distillation on COCO: a GFL R-101-FPN student (``gfl_R_101_FPN_ms2x.py``:
data, 2x multi-scale schedule and ImageNet start) taught by the frozen GFL
R-101-DCN teacher (``gfl_R_101_FPN_dconv_c3_c5_ms2x.py``, the released model
converted by tools/convert_mmdet_checkpoint.py, expected at
``pretrained/gfl_R_101_FPN_dconv_c3_c5_ms2x_coco.pth``;
``distillation.teacher.checkpoint=...`` for another): MMDetection's
``ld_r101-gflv1-r101-dcn_fpn_2x_coco``. Published: 44.7 -> 45.5 AP on COCO
val2017 (the LD release). Not reproduced here.

The student's checkpoints are a plain GFL R-101's (``gfl_R_101_FPN_ms2x.py``
evaluates them); the teacher is in none of them.
"""

from detectron2.config import LazyCall as L

from gfl_d2.teacher import build_teacher

from ..gfl_R_101_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

distillation = dict(
    teacher=L(build_teacher)(
        config_file="COCO-Detection/gfl_R_101_FPN_dconv_c3_c5_ms2x.py",
        checkpoint="pretrained/gfl_R_101_FPN_dconv_c3_c5_ms2x_coco.pth",
    ),
    loss_weight=0.25,
    temperature=10.0,
)
