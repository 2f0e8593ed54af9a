"""
GFL with QFL's beta = 3.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.qfl_beta = 3.0
train.output_dir = "./output/ablations/gfl_beta3"
