"""
Localization Distillation on COCO: ``ld_R_18_gfl_R_101_FPN_1x.py`` with a
ResNet-34 student (from ``pretrained/R-34.pkl``, torchvision's ``resnet34``
converted the same way). Published (the LD release, COCO val, 1x at 6 images a
batch): R-34 38.9 -> 39.8 AP. Not reproduced here.
"""

from .ld_R_18_gfl_R_101_FPN_1x import (  # noqa: F401
    dataloader,
    distillation,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.stages.depth = 34

train.init_checkpoint = "pretrained/R-34.pkl"
