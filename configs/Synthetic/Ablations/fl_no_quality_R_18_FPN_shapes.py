"""
Focal Loss with no localisation-quality estimate and plain distance regression.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..atss_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.quality = "none"
train.output_dir = "./output/ablations/fl_no_quality"
