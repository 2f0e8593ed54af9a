"""
GFL with n = 8.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.box2box_transform.reg_max = 8
train.output_dir = "./output/ablations/gfl_n8"
