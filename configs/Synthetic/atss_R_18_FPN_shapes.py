"""
ATSS, the paper's baseline, on the embedded dataset: the GFL model of
``gfl_R_18_FPN_shapes.py`` with Focal Loss on hard labels, a separate
centerness branch (multiplied into the score at test time) and plain distance
regression (Dirac delta) with GIoU, weighted by the centerness target.
"""

from .gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train

model.quality = "centerness"
model.box_representation = "dirac"

train.output_dir = "./output/atss_R_18_FPN_shapes"
