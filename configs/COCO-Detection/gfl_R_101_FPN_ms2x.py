"""
GFL R-101-FPN, multi-scale 2x. Published: 44.9 AP on COCO minival, 45.0 on
test-dev.

The release starts from torchvision's ImageNet ResNet-101, expected at
``pretrained/R-101.pkl`` in detectron2's format. Make it once with
``tools/convert-torchvision-to-d2.py`` from detectron2's repository (not in
its wheel), or pass ``train.init_checkpoint=/your/file.pkl``; see
docs/configs.md ("ImageNet weights for R-101 and X-101"):

    python -c "import torch, torchvision; torch.save(torchvision.models.resnet101(
        weights='IMAGENET1K_V1').state_dict(), 'resnet101.pth')"
    python convert-torchvision-to-d2.py resnet101.pth pretrained/R-101.pkl
"""

from .gfl_R_50_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "pretrained/R-101.pkl"
