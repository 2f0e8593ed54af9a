"""
NanoDet-Plus-m-1.5x at 320x320 (``nanodet-plus-m-1.5x_320.yml``): ShuffleNetV2
1.5x, GhostPAN and head of 128 channels, auxiliary head of 256. Published: 29.9 mAP on COCO val2017.
"""

from detectron2.layers import ShapeSpec

from .nanodet_plus_m_320 import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.size = "1.5x"
model.backbone.out_channels = 128
model.head.input_shape = [ShapeSpec(channels=128)] * 4
model.head.feat_channels = 128
model.aux_head.input_shape = [ShapeSpec(channels=256)] * 4
model.aux_head.conv_dims = [256] * 4
