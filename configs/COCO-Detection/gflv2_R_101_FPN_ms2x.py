"""
GFL V2 R-101-FPN, multi-scale 2x. Published: 45.8 AP on COCO minival, 46.0 on
test-dev (14.6 FPS on a 2080Ti, as V1's R-101).

The release starts from torchvision's ImageNet ResNet-101, expected at
``pretrained/R-101.pkl`` (``train.init_checkpoint``, from
``gfl_R_101_FPN_ms2x.py``); make it once with detectron2's
``tools/convert-torchvision-to-d2.py`` as that file's docstring shows, see
docs/configs.md ("ImageNet weights for R-101 and X-101").
"""

from .gfl_R_101_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.quality = "dgqp"
