"""detectron2's RetinaNet with Quality Focal Loss in place of Focal Loss (paper Table 1b)."""

from gfl_d2.modeling import QFLRetinaNet

from .retinanet_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train

model._target_ = QFLRetinaNet
model.qfl_beta = 2.0

train.output_dir = "./output/retinanet_qfl_R_18_FPN_shapes"
