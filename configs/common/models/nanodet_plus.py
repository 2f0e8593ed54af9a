"""
NanoDet-Plus-m as gfl-d2 parts (RangiLyu/nanodet's ``nanodet-plus-m_*.yml``): a
ShuffleNetV2 1.0x (stages 2-4, LeakyReLU 0.1) inside a GhostPAN of 96 channels
(depthwise kernel 5, one extra level: P3-P6), NanoDet-Plus's head (two
depthwise-separable convs per level, n = 7), points at x * stride; BGR input
normalised with NanoDet's mean/std; every candidate over 0.05 goes to NMS
(IoU 0.6), 100 detections. Trained as NanoDet-Plus (gfl_d2.modeling.NanoDetPlus):
dynamic soft-label assignment (top-k 13, IoU factor 3) from the training-only
auxiliary head (NanoDet's SimpleConvHead: 4 convs of 192 channels, GroupNorm,
LeakyReLU) on the neck's and a copy of the neck's features, which it reads
detached after 10 epochs of COCO at 96 images a batch. ``model.aux_head=null``
drops the auxiliary parts (assignment from the head itself); inference never
runs them, and checkpoints without them (converted NanoDet weights) load whole.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from gfl_d2.modeling import (
    ATSSMatcher,
    DistributionBox2BoxTransform,
    DynamicSoftLabelAssigner,
    GFLHead,
    GhostPAN,
    NanoDetPlus,
    NanoDetPlusHead,
    ShuffleNetV2,
)

model = L(NanoDetPlus)(
    backbone=L(GhostPAN)(
        bottom_up=L(ShuffleNetV2)(size="1.0x", activation="LeakyReLU", norm="BN"),
        in_features=["stage2", "stage3", "stage4"],
        out_channels=96,
        kernel_size=5,
        num_extra_levels=1,
        norm="BN",
        activation="LeakyReLU",
    ),
    head=L(NanoDetPlusHead)(
        input_shape=[ShapeSpec(channels=96)] * 4,
        num_classes="${..num_classes}",
        box2box_transform=L(DistributionBox2BoxTransform)(reg_max=7, bin_width=1.0),
        feat_channels=96,
        num_convs=2,
        kernel_size=5,
        norm="BN",
        activation="LeakyReLU",
    ),
    # only the points matter (x * stride, offset 0); ATSS's anchors for the bin check
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[40], [80], [160], [320]], aspect_ratios=[1.0], strides=[8, 16, 32, 64], offset=0.0
    ),
    # the prediction-free labels the bin check reads; training assigns with the assigner
    anchor_matcher=L(ATSSMatcher)(topk=9),
    assigner=L(DynamicSoftLabelAssigner)(topk=13, iou_factor=3.0),
    aux_head=L(GFLHead)(
        input_shape=[ShapeSpec(channels=192)] * 4,  # twice the neck's
        num_classes="${..num_classes}",
        conv_dims=[192] * 4,
        norm="GN",
        activation="LeakyReLU",
        box2box_transform="${..head.box2box_transform}",
    ),
    # NanoDet's detach_epoch 10: 10 epochs of COCO train2017 (117,266 images, last
    # incomplete batch dropped) at 96 images a batch
    aux_detach_iter=10 * (117266 // 96),
    head_in_features=["p3", "p4", "p5", "p6"],
    num_classes=80,
    test_score_thresh=0.05,
    test_topk_candidates=1000000,  # NanoDet sends every candidate over the threshold to NMS
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    size_divisibility=32,
    pixel_mean=[103.53, 116.28, 123.675],
    pixel_std=[57.375, 57.12, 58.395],
    input_format="BGR",
)
