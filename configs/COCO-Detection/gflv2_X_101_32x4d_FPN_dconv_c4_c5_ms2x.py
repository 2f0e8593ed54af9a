"""
GFL V2 X-101-32x4d-FPN with deformable convolutions (v1, ``DCN``) in
res4-res5, multi-scale 2x: the authors' ``gfocal_x101_dcn_fpn_ms2x``
(implus/GFocalV2). Published: 48.8 AP on COCO minival, 49.0 on test-dev.
"""

from .gfl_X_101_32x4d_FPN_dconv_c4_c5_ms2x import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.head.quality = "dgqp"
