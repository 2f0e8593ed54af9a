"""
GFL V2 R-101-FPN with deformable convolutions (v1, ``DCN``) in res3-res5,
multi-scale 2x: the authors' ``gfocal_r101_dcn_fpn_ms2x`` (implus/GFocalV2).
Published: 48.0 AP on COCO minival, 48.2 on test-dev.
"""

from .gfl_R_101_FPN_dconv_c3_c5_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.head.quality = "dgqp"
