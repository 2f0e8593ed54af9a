"""
Localization Distillation on COCO: a GFL R-50-FPN student (``gfl_R_50_FPN_1x.py``,
the same data, schedule and ImageNet start) learns the edge distributions of a
frozen GFL R-101-FPN ms-2x teacher (the released model converted by
tools/convert_mmdet_checkpoint.py, expected at
``pretrained/gfl_R_101_FPN_ms2x_coco.pth``; ``distillation.teacher.checkpoint=...``
for another). Published (the LD release, COCO val, 1x = 12 epochs at 6
images a batch and lr 0.00375): R-50 40.1 -> 41.1 AP. This config trains the
same 12 epochs with GFL's 1x recipe (16 images a batch, lr 0.01: the linear
scaling of the same rate). Not reproduced here (no COCO training on this
project's machines).

    python tools/train_net.py \
        --config-file configs/COCO-Detection/Distillation/ld_R_50_gfl_R_101_FPN_1x.py --num-gpus 8

The student's checkpoints are a plain GFL R-50's (``gfl_R_50_FPN_1x.py``
evaluates them); the teacher is in none of them.
"""

from detectron2.config import LazyCall as L

from gfl_d2.teacher import build_teacher

from ..gfl_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

# the teacher and LD's settings: the training entry point builds the teacher and
# wraps the student (model) with it; evaluation and export build the model alone
distillation = dict(
    teacher=L(build_teacher)(
        config_file="COCO-Detection/gfl_R_101_FPN_ms2x.py",
        checkpoint="pretrained/gfl_R_101_FPN_ms2x_coco.pth",
    ),
    loss_weight=0.25,
    temperature=10.0,
)
