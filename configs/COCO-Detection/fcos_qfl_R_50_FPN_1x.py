"""detectron2's FCOS R-50-FPN 1x with Quality Focal Loss in place of Focal Loss."""

from detectron2.model_zoo import get_config

from gfl_d2.modeling import QFLFCOS

_base = get_config("COCO-Detection/fcos_R_50_FPN_1x.py")
dataloader, lr_multiplier, model, optimizer, train = (
    _base.dataloader,
    _base.lr_multiplier,
    _base.model,
    _base.optimizer,
    _base.train,
)

model._target_ = QFLFCOS
model.qfl_beta = 2.0
