"""
GFL V1 with a ResNet-50-FPN (P3-P7), 80 classes: the architecture and
preprocessing of the authors' released models (pytorch-style ResNet with the
stride on the 3x3 conv, frozen BN, RGB input normalised with the ImageNet
mean/std in 0-255 units, P6/P7 from P5's output without a ReLU in between,
images padded to a multiple of 32).
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet

from gfl_d2.modeling import (
    GFL,
    ATSSMatcher,
    DistributionBox2BoxTransform,
    GFLHead,
    LastLevelP6P7FromP5,
)

model = L(GFL)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(
                depth=50,
                stride_in_1x1=False,
                norm="FrozenBN",
            ),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7FromP5)(in_channels=256, out_channels=256, in_feature="p5"),
    ),
    head=L(GFLHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="GN",
        # what the box outputs are: n = 16 (bins 0..n of each edge) of width Δ = 1 stride;
        # DiracBox2BoxTransform for plain distance regression
        box2box_transform=L(DistributionBox2BoxTransform)(reg_max=16, bin_width=1.0),
        # "joint" (V1), "dgqp" (GFL V2), "centerness" / "iou" (a separate branch), "none"
        quality="joint",
    ),
    # one square anchor of 8 x stride per location (ATSS's octave base scale)
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[64], [128], [256], [512], [1024]],
        aspect_ratios=[1.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    anchor_matcher=L(ATSSMatcher)(topk=9),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    num_classes=80,
    # the losses, their weights and inference keep GFL's defaults (the paper's):
    # gfl_d2.modeling.GFL documents each; the ablation axes are gfl_d2.modeling.GFLVariant
    size_divisibility=32,
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
