"""
GFL's model parts: the meta-architecture, its head, the box representations,
ATSS, the losses, GFL V2's quality predictor, the Localization Distillation
wrapper, detectron2's RetinaNet and FCOS with Quality Focal Loss, the
backbone pieces of the released models (deformable convolutions, Res2Net),
and NanoDet-Plus (ShuffleNetV2, GhostPAN, its head, its training).
"""

from .atss import ATSSMatcher, atss_labels
from .backbone import (
    LastLevelP6P7FromP5,
    build_gfl_res2net_fpn_backbone,
    build_gfl_resnet_fpn_backbone,
    make_basic_stages,
    make_bottleneck_stages,
    make_resnext_stages,
)
from .box_coding import (
    DiracBox2BoxTransform,
    DistributionBox2BoxTransform,
    EdgeDecoding,
    aligned_iou,
    anchor_points,
    box2distance,
    centerness,
    distance2box,
    integral,
)
from .deform_conv import (
    DeformBottleneckBlock,
    DeformConv,
    ModulatedDeformConv,
    deform_forward,
    deformable_3x3,
)
from .dgqp import DistributionGuidedQualityPredictor, distribution_statistics
from .distillation import LocalizationDistiller, check_teacher
from .dsl_assigner import DynamicSoftLabelAssigner
from .ghost_pan import GhostPAN, build_nanodet_plus_backbone
from .head import GFLHead, Scale, build_box2box_transform
from .losses import (
    LocalizationTargets,
    distribution_focal_loss,
    fused_quality_focal_loss,
    localization_distillation_loss,
    quality_focal_loss,
    reduce_mean,
    sigmoid_focal_loss,
)
from .meta_arch import GFL
from .nanodet_head import NanoDetPlusHead
from .nanodet_plus import NanoDetPlus
from .qfl_detectors import QFLFCOS, QFLRetinaNet
from .res2net import Bottle2neckBlock, DeepStem, make_res2net_stages
from .shufflenet import ShuffleNetV2, ShuffleV2Block
from .variants import GFLVariant

__all__ = [
    "ATSSMatcher",
    "atss_labels",
    "LastLevelP6P7FromP5",
    "build_gfl_resnet_fpn_backbone",
    "build_gfl_res2net_fpn_backbone",
    "make_basic_stages",
    "make_resnext_stages",
    "make_bottleneck_stages",
    "DeformBottleneckBlock",
    "DeformConv",
    "ModulatedDeformConv",
    "deform_forward",
    "deformable_3x3",
    "Bottle2neckBlock",
    "DeepStem",
    "make_res2net_stages",
    "ShuffleNetV2",
    "GhostPAN",
    "NanoDetPlusHead",
    "NanoDetPlus",
    "DynamicSoftLabelAssigner",
    "build_nanodet_plus_backbone",
    "ShuffleV2Block",
    "DiracBox2BoxTransform",
    "DistributionBox2BoxTransform",
    "EdgeDecoding",
    "aligned_iou",
    "anchor_points",
    "box2distance",
    "centerness",
    "distance2box",
    "integral",
    "DistributionGuidedQualityPredictor",
    "distribution_statistics",
    "LocalizationDistiller",
    "check_teacher",
    "GFLHead",
    "Scale",
    "build_box2box_transform",
    "LocalizationTargets",
    "distribution_focal_loss",
    "fused_quality_focal_loss",
    "localization_distillation_loss",
    "quality_focal_loss",
    "reduce_mean",
    "sigmoid_focal_loss",
    "GFL",
    "QFLFCOS",
    "QFLRetinaNet",
    "GFLVariant",
]
