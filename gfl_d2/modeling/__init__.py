from .atss import ATSSMatcher
from .backbone import (
    LastLevelP6P7FromP5,
    build_gfl_resnet_fpn_backbone,
    make_basic_stages,
    make_resnext_stages,
)
from .box_coding import (
    DiracBox2BoxTransform,
    DistributionBox2BoxTransform,
    EdgeDecoding,
    aligned_iou,
    box2distance,
    centerness,
    distance2box,
    integral,
)
from .dgqp import DistributionGuidedQualityPredictor, distribution_statistics
from .head import GFLHead, Scale
from .losses import (
    distribution_focal_loss,
    fused_quality_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
)
from .meta_arch import GFL
from .qfl_detectors import QFLFCOS, QFLRetinaNet
from .variants import GFLVariant

__all__ = [k for k in globals().keys() if not k.startswith("_")]
