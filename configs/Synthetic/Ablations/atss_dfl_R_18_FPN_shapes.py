"""
ATSS + DFL: Focal Loss and a centerness branch, with the general distribution (n = 16)
trained by DFL and GIoU.
One of the ablation variants of tools/ablation.py; see projects/GFL/README.md.
"""

from detectron2.config import LazyCall as L

from gfl_d2.modeling import DistributionBox2BoxTransform

from ..atss_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.box2box_transform = L(DistributionBox2BoxTransform)(reg_max=16, bin_width=1.0)
model.output_box_distributions = True
train.output_dir = "./output/ablations/atss_dfl"
