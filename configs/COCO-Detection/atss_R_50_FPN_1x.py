"""
ATSS (the GFL paper's baseline, about 1 AP below GFL in its Table 3): the GFL model
with Focal Loss on hard labels, a separate centerness branch and plain
distance regression (Dirac delta) trained with GIoU.
"""

from .gfl_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.quality = "centerness"
model.box_representation = "dirac"
