"""
Localization Distillation on COCO: a GFL R-18-FPN student (ResNet-18, basic
blocks, frozen BN, from torchvision's ImageNet weights) taught by the frozen
GFL R-101-FPN ms-2x teacher of ``ld_R_50_gfl_R_101_FPN_1x.py``, 1x. Published
(the LD release, COCO val, 1x at 6 images a batch): R-18 35.8 -> 36.5 AP. Not
reproduced here.

The ImageNet weights are expected at ``pretrained/R-18.pkl`` in detectron2's
format (docs/configs.md, "ImageNet weights"):

    python -c "import torch, torchvision; torch.save(torchvision.models.resnet18(
        weights='IMAGENET1K_V1').state_dict(), 'resnet18.pth')"
    python convert-torchvision-to-d2.py resnet18.pth pretrained/R-18.pkl
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling.backbone import make_basic_stages

from .ld_R_50_gfl_R_101_FPN_1x import (  # noqa: F401
    dataloader,
    distillation,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.stages = L(make_basic_stages)(depth=18, width=64, norm="FrozenBN")

train.init_checkpoint = "pretrained/R-18.pkl"
