"""
GFL without DFL: the general distribution trained by GIoU on its integral only.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.loss_dfl_weight = 0.0
train.output_dir = "./output/ablations/gfl_no_dfl"
