"""
GFL with bins 0.5 stride apart (Δ = 0.5).
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.box2box_transform.bin_width = 0.5
train.output_dir = "./output/ablations/gfl_delta0_5"
