"""
detectron2's own FCOS on the embedded dataset, with the backbone, data and
schedule of ``gfl_R_18_FPN_shapes.py`` and a 2-conv GN head of the same width;
the rest (center sampling, scale ranges, GIoU, centerness, test threshold
0.2 on sqrt(score x centerness)) is detectron2's default.
"""

from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from .gfl_R_18_FPN_shapes import dataloader, lr_multiplier, optimizer, train
from .gfl_R_18_FPN_shapes import model as _gfl

model = get_config("common/models/fcos.py").model
model.backbone = _gfl.backbone
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.num_classes = 5
model.pixel_mean = _gfl.pixel_mean
model.pixel_std = _gfl.pixel_std

train.output_dir = "./output/fcos_R_18_FPN_shapes"
