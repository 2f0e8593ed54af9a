"""detectron2's FCOS with Quality Focal Loss in place of Focal Loss (paper Table 1b)."""

from gfl_d2.modeling import QFLFCOS

from .fcos_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train

model._target_ = QFLFCOS
model.qfl_beta = 2.0

train.output_dir = "./output/fcos_qfl_R_18_FPN_shapes"
