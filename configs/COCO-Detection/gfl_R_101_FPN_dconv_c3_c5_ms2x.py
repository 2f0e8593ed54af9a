"""
GFL R-101-FPN with deformable convolutions (v1, mmcv's ``DCN``) in the 3x3
convs of res3-res5, multi-scale 2x: MMDetection's
``gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco``. Published: 47.1 AP on COCO
val2017 (MMDetection's model zoo); the paper's R-101-DCN: 47.3 on test-dev.

The deformable convs run on ``torchvision.ops.deform_conv2d`` (CPU and CUDA,
no compiled detectron2 ops). Training starts from torchvision's ImageNet
ResNet-101 (``pretrained/R-101.pkl``, see ``gfl_R_101_FPN_ms2x.py``); the offset
convs are not in it and start at zero, as in MMDetection and detectron2.
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling import make_bottleneck_stages

from .gfl_R_101_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages = L(make_bottleneck_stages)(
    depth=101,
    deform_on_per_stage=[False, True, True, True],
    deform_modulated=False,
    deform_num_groups=1,
    stride_in_1x1=False,
    norm="FrozenBN",
)
