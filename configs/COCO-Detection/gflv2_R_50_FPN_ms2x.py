"""
GFL V2 R-50-FPN, multi-scale 2x (shorter side drawn from [480, 960], 180k
iterations at 16 images). Published: 43.9 AP on COCO minival, 44.4 on test-dev.
"""

from .gfl_R_50_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.quality = "dgqp"
