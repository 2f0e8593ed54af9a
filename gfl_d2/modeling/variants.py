"""
The paper's ablation axes as small objects chosen once, at construction, so
that ``GFL.losses`` and inference read as GFL does, with no branching on
settings. The variants themselves (GFL, ATSS, ATSS+QFL, ...) are config files:
``configs/Synthetic/Ablations/`` and ``configs/COCO-Detection/atss_R_50_FPN_1x.py``.

============================  ==========  ============  ===================
variant                       cls_loss    quality       box_representation
============================  ==========  ============  ===================
GFL (default)                 "qfl"       "joint"       "distribution"
ATSS (the paper's baseline)   "focal"     "centerness"  "dirac"
============================  ==========  ============  ===================
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .box_coding import DiracBox2BoxTransform, DistributionBox2BoxTransform
from .losses import dense_class_targets, quality_focal_loss, sigmoid_focal_loss

__all__ = ["GFLVariant", "QualityFocalLoss", "FocalLoss"]

CLS_LOSSES = ("qfl", "focal")
QUALITIES = ("joint", "centerness", "iou", "none")
SEPARATE_QUALITIES = ("centerness", "iou")  # the ones with a branch of their own
BOX_REPRESENTATIONS = ("distribution", "dirac")
BOX_LOSS_WEIGHTINGS = ("auto", "score", "centerness", "none")


class QualityFocalLoss:
    """QFL on the joint score: the target at a positive's class is the IoU of its predicted box."""

    name = "loss_qfl"

    def __init__(self, num_classes: int, beta: float = 2.0):
        self.num_classes, self.beta = num_classes, beta

    def __call__(self, pred_logits: Tensor, gt_labels: Tensor, ious: Tensor) -> Tensor:
        """(N, R, C) logits, (N, R) labels, (P,) IoUs of the positives -> summed loss."""
        targets = dense_class_targets(gt_labels, self.num_classes, ious)
        return quality_focal_loss(pred_logits, targets, self.beta).sum()


class FocalLoss:
    """Focal Loss on 0/1 labels (ATSS, FCOS, RetinaNet); the IoUs are not its business."""

    name = "loss_cls"

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0):
        self.num_classes, self.alpha, self.gamma = num_classes, alpha, gamma

    def __call__(self, pred_logits: Tensor, gt_labels: Tensor, ious: Tensor) -> Tensor:
        targets = dense_class_targets(gt_labels, self.num_classes)
        return sigmoid_focal_loss(pred_logits, targets, self.alpha, self.gamma).sum()


# weight of each positive in the GIoU and DFL losses: f((P, C) detached logits, (P,) centerness) -> (P,)
def _score_weights(pos_logits: Tensor, centerness: Tensor) -> Tensor:
    return pos_logits.float().sigmoid().max(dim=1).values


def _centerness_weights(pos_logits: Tensor, centerness: Tensor) -> Tensor:
    return centerness


def _unit_weights(pos_logits: Tensor, centerness: Tensor) -> Tensor:
    return torch.ones_like(centerness)


# target of a separate quality branch: f((P,) IoUs, (P,) centerness) -> (P,)
def _iou_target(ious: Tensor, centerness: Tensor) -> Tensor:
    return ious


def _centerness_target(ious: Tensor, centerness: Tensor) -> Tensor:
    return centerness


@dataclass(frozen=True)
class GFLVariant:
    """
    One point of the paper's ablation space, validated on construction.

    Attributes:
        cls_loss: "qfl" (Quality Focal Loss on the joint classification-IoU
            score) or "focal" (Focal Loss on 0/1 labels).
        quality: "joint" (in the classification score; needs "qfl"),
            "centerness" or "iou" (a separate branch trained with BCE on the
            positives, multiplied into the score at test time as in ATSS/FCOS),
            or "none".
        box_representation: "distribution" (general distribution, decoded by
            the integral) or "dirac" (one distance per edge).
        box_loss_weighting: weight of each positive in GIoU and DFL: "score"
            (detached max predicted score, GFL), "centerness" (the centerness
            target, ATSS) or "none"; "auto" is "score" with a joint quality,
            "centerness" otherwise.
    """

    cls_loss: str = "qfl"
    quality: str = "joint"
    box_representation: str = "distribution"
    box_loss_weighting: str = "auto"

    def __post_init__(self):
        for name, allowed in (("cls_loss", CLS_LOSSES), ("quality", QUALITIES),
                              ("box_representation", BOX_REPRESENTATIONS),
                              ("box_loss_weighting", BOX_LOSS_WEIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        # QFL's target is the localisation quality, so the two come together
        if (self.cls_loss == "qfl") != (self.quality == "joint"):
            raise ValueError(
                f"cls_loss={self.cls_loss!r} with quality={self.quality!r}: the joint quality is trained by QFL, "
                "so use cls_loss='qfl' with quality='joint', or cls_loss='focal' with 'centerness', 'iou' or 'none'"
            )
        if self.box_loss_weighting == "auto":
            object.__setattr__(self, "box_loss_weighting", "score" if self.quality == "joint" else "centerness")

    @property
    def has_quality_branch(self) -> bool:
        return self.quality in SEPARATE_QUALITIES

    def classification_loss(self, num_classes: int, qfl_beta: float, focal_alpha: float, focal_gamma: float):
        if self.cls_loss == "qfl":
            return QualityFocalLoss(num_classes, qfl_beta)
        return FocalLoss(num_classes, focal_alpha, focal_gamma)

    def box_transform(self, reg_max: int, bin_width: float, anchor_scale: float):
        if self.box_representation == "distribution":
            return DistributionBox2BoxTransform(reg_max, bin_width, anchor_scale)
        return DiracBox2BoxTransform(anchor_scale)

    def box_loss_weights(self) -> Callable[[Tensor, Tensor], Tensor]:
        return {"score": _score_weights, "centerness": _centerness_weights, "none": _unit_weights}[
            self.box_loss_weighting
        ]

    def quality_target(self) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        return {"iou": _iou_target, "centerness": _centerness_target}.get(self.quality)

    def check_head_layout(self, head, box_transform) -> None:
        """The head owns its layout (``box_channels``, ``has_quality_branch``); it must be what this variant reads."""
        channels = getattr(head, "box_channels", None)
        if channels is not None and channels != box_transform.num_outputs:
            raise ValueError(
                f"the head predicts {channels} box channels, but box_representation={self.box_representation!r} "
                f"reads {box_transform.num_outputs}: set head.box_channels={box_transform.num_outputs}"
            )
        branch = getattr(head, "has_quality_branch", None)
        if branch is not None and branch != self.has_quality_branch:
            raise ValueError(
                f"quality={self.quality!r} {'needs' if self.has_quality_branch else 'has no use for'} "
                f"a separate quality branch: set head.quality_branch={self.has_quality_branch}"
            )
