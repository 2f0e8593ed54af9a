"""
GFL R-101-FPN, multi-scale 2x. Published: 44.9 AP on COCO minival, 45.0 on
test-dev.

The release starts from torchvision's ImageNet ResNet-101; convert it once with
detectron2's ``tools/convert-torchvision-to-d2.py`` and point
``train.init_checkpoint`` at the result (see projects/GFL/README.md).
"""
from .gfl_R_50_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "pretrained/R-101-torchvision.pkl"
