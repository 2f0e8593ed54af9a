"""
Focal Loss with a separate IoU branch (trained on the positives, multiplied into the score
at test time) and plain distance regression.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from ..atss_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.quality = "iou"
train.output_dir = "./output/ablations/fl_iou_branch"
