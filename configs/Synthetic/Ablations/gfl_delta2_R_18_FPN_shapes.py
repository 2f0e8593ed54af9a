"""
GFL with bins 2 strides apart (Δ = 2).
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.box2box_transform.bin_width = 2.0
train.output_dir = "./output/ablations/gfl_delta2"
