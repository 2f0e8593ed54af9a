"""
detectron2's own RetinaNet on the embedded dataset, with the backbone, data and
schedule of ``gfl_R_18_FPN_shapes.py`` (ResNet-18 GN from scratch, 64-channel
FPN P3-P7 with P6/P7 from P5) and a 2-conv head of the same width. The head
uses GroupNorm like GFL's (detectron2's default RetinaNet head has none); the
rest (9 anchors per location, IoU matcher, smooth-L1 deltas, Focal Loss) is
detectron2's default.
"""

from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from .gfl_R_18_FPN_shapes import dataloader, lr_multiplier, optimizer, train
from .gfl_R_18_FPN_shapes import model as _gfl

model = get_config("common/models/retinanet.py").model
model.backbone = _gfl.backbone
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.head.norm = "GN"
model.num_classes = 5
model.pixel_mean = _gfl.pixel_mean
model.pixel_std = _gfl.pixel_std
model.input_format = "RGB"

train.output_dir = "./output/retinanet_R_18_FPN_shapes"
