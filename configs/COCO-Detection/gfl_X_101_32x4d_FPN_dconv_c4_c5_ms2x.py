"""
GFL X-101-32x4d-FPN with deformable convolutions (v1, mmcv's ``DCN``; grouped
as the 3x3 conv they replace, one offset group) in res4-res5, multi-scale 2x:
MMDetection's ``gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco``. Published:
48.1 AP on COCO val2017 (MMDetection's model zoo); the paper's best model,
X-101-32x4d-DCN: 48.2 on test-dev.

Training starts from an ImageNet ResNeXt-101 32x4d (``pretrained/X-101-32x4d.pkl``,
see ``gfl_X_101_32x4d_FPN_ms2x.py``); the offset convs start at zero.
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling import make_resnext_stages

from .gfl_X_101_32x4d_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.stages = L(make_resnext_stages)(
    depth=101,
    num_groups=32,
    width_per_group=4,
    deform_on_per_stage=[False, False, True, True],
    deform_modulated=False,
    deform_num_groups=1,
    stride_in_1x1=False,
    norm="FrozenBN",
)
