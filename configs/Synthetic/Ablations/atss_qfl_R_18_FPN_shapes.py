"""
ATSS + QFL: the joint classification-IoU score trained with QFL, plain distance regression
(Dirac delta) with GIoU weighted by the detached score.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.box_representation = "dirac"
train.output_dir = "./output/ablations/atss_qfl"
