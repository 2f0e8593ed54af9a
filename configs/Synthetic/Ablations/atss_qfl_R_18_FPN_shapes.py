"""
ATSS + QFL: the joint classification-IoU score trained with QFL, plain distance regression
(Dirac delta) with GIoU weighted by the detached score.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling import DiracBox2BoxTransform

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.box2box_transform = L(DiracBox2BoxTransform)(anchor_scale=8.0)
model.output_box_distributions = False  # a Dirac delta has no distribution
train.output_dir = "./output/ablations/atss_qfl"
