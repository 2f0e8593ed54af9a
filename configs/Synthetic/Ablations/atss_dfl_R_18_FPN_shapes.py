"""
ATSS + DFL: Focal Loss and a centerness branch, with the general distribution (n = 16)
trained by DFL and GIoU.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..atss_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.box_representation = "distribution"
train.output_dir = "./output/ablations/atss_dfl"
