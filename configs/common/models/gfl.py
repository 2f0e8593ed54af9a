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

from gfl_d2.modeling import GFL, ATSSMatcher, GFLHead, LastLevelP6P7FromP5

model = L(
    GFL
)(
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
        prior_prob=0.01,
        # the head's layout follows the model's settings below: 4 * (reg_max + 1)
        # distribution logits (4 with box_representation="dirac"), a quality branch
        # with quality="centerness" / "iou", GFL V2's quality predictor with "dgqp";
        # set them on the model only (model.reg_max=8)
        reg_max="${..reg_max}",
        box_representation="${..box_representation}",
        quality="${..quality}",
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
    reg_max=16,
    bin_width=1.0,
    anchor_scale=8.0,
    qfl_beta=2.0,
    # the paper's ablation axes (gfl_d2.modeling.GFLVariant); configs/Synthetic/Ablations has the variants
    cls_loss="auto",  # follows the quality: "qfl" with a joint quality, "focal" (0/1 labels) otherwise
    quality="joint",  # or "dgqp" (GFL V2), "centerness" / "iou" (separate branch, with "focal") / "none"
    box_representation="distribution",  # or "dirac" (plain distance regression)
    box_loss_weighting="auto",  # "score" for a joint quality, else "centerness" (ATSS)
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    loss_cls_weight=1.0,  # QFL, or Focal Loss with cls_loss="focal"
    loss_bbox_weight=2.0,
    loss_dfl_weight=0.25,  # 0: no DFL
    loss_quality_weight=1.0,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    # per-edge distributions and standard deviations in the outputs
    output_box_distributions=True,
    size_divisibility=32,
    # CPU inference: "eager", or "frozen" (backbone and head through a frozen trace for oneDNN; equal up to
    # float32 rounding, faster: docs/benchmarks.md)
    cpu_inference="eager",
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
