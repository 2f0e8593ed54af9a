"""
ATSS, the paper's baseline, on the embedded dataset: the GFL model of
``gfl_R_18_FPN_shapes.py`` with Focal Loss on hard labels, a separate
centerness branch (multiplied into the score at test time) and plain distance
regression (Dirac delta) with GIoU, weighted by the centerness target.
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling import DiracBox2BoxTransform

from .gfl_R_18_FPN_shapes import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.head.quality = "centerness"
model.head.box2box_transform = L(DiracBox2BoxTransform)(anchor_scale=8.0)
model.output_box_distributions = False  # a Dirac delta has no distribution

train.output_dir = "./output/atss_R_18_FPN_shapes"
