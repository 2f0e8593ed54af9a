"""
ATSS (the GFL paper's baseline, about 1 AP below GFL in its Table 3): the GFL model
with Focal Loss on hard labels, a separate centerness branch and plain
distance regression (Dirac delta) trained with GIoU.
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling import DiracBox2BoxTransform

from .gfl_R_50_FPN_1x import (  # noqa: F401
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.head.quality = "centerness"
model.head.box2box_transform = L(DiracBox2BoxTransform)(anchor_scale=8.0)
model.output_box_distributions = False  # a Dirac delta has no distribution
