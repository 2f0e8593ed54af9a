"""
GFL X-101-32x4d-FPN, multi-scale 2x. Published: 45.7 AP on COCO minival,
46.0 on test-dev.

ResNeXt-101 32x4d: 32 groups of 4 channels in res2's 3x3 conv (doubling each
stage), stride on the 3x3 conv. It starts from an ImageNet ResNeXt-101 32x4d,
expected at ``pretrained/X-101-32x4d.pkl`` in detectron2's format: take one in
torchvision's key layout (the one MMDetection's configs use,
``open-mmlab://resnext101_32x4d``) and convert it once with
``tools/convert-torchvision-to-d2.py`` from detectron2's repository, or pass
``train.init_checkpoint=/your/file.pkl``; see docs/configs.md ("ImageNet
weights for R-101 and X-101"):

    python convert-torchvision-to-d2.py resnext101_32x4d.pth pretrained/X-101-32x4d.pkl
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling import make_resnext_stages

from .gfl_R_50_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages = L(make_resnext_stages)(
    depth=101, num_groups=32, width_per_group=4, stride_in_1x1=False, norm="FrozenBN"
)
train.init_checkpoint = "pretrained/X-101-32x4d.pkl"
