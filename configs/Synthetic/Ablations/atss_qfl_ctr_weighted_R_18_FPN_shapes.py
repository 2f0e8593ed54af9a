"""
ATSS + QFL with ATSS's centerness weights on the GIoU loss (in place of GFL's detached
score).
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.box_representation = "dirac"
model.box_loss_weighting = "centerness"
train.output_dir = "./output/ablations/atss_qfl_ctr_weighted"
