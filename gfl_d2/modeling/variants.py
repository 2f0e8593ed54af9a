"""
The paper's ablation axes as small objects chosen once, at construction, so
that ``GFL.losses`` and inference read as GFL does, with no branching on
settings. The variants themselves (GFL, ATSS, ATSS+QFL, ...) are config files:
``configs/Synthetic/Ablations/`` and ``configs/COCO-Detection/atss_R_50_FPN_1x.py``.

============================  ==========  ============  ===================
variant                       cls_loss    quality       box_representation
============================  ==========  ============  ===================
GFL (default)                 "qfl"       "joint"       "distribution"
GFL V2                        "qfl"       "dgqp"        "distribution"
ATSS (the paper's baseline)   "focal"     "centerness"  "dirac"
============================  ==========  ============  ===================
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .losses import (
    dense_class_targets,
    fused_quality_focal_loss,
    quality_focal_loss,
    sigmoid_focal_loss,
)

__all__ = [
    "GFLVariant",
    "QualityFocalLoss",
    "FusedQualityFocalLoss",
    "FocalLoss",
    "check_quality",
]

CLS_LOSSES = ("auto", "qfl", "focal")
QUALITIES = ("joint", "dgqp", "centerness", "iou", "none")
JOINT_QUALITIES = ("joint", "dgqp")  # trained by QFL, inside the classification score
SEPARATE_QUALITIES = ("centerness", "iou")  # the ones with a branch of their own
BOX_REPRESENTATIONS = ("distribution", "dirac")
BOX_LOSS_WEIGHTINGS = ("auto", "score", "centerness", "none")


class QualityFocalLoss:
    """QFL on the joint score: the target at a positive's class is the IoU of its predicted box."""

    name = "loss_qfl"

    def __init__(self, num_classes: int, beta: float = 2.0):
        self.num_classes, self.beta = num_classes, beta

    def __call__(
        self, pred_logits: Tensor, gt_labels: Tensor, ious: Tensor, quality_logits=None
    ) -> Tensor:
        """(N, R, C) logits, (N, R) labels, (P,) IoUs of the positives -> summed loss."""
        targets = dense_class_targets(gt_labels, self.num_classes, ious)
        return quality_focal_loss(pred_logits, targets, self.beta).sum()


class FusedQualityFocalLoss(QualityFocalLoss):
    """
    GFL V2's QFL: the same targets, on the probability
    ``sigmoid(cls) * sigmoid(quality)`` (the quality from the distributions).
    """

    def __call__(
        self, pred_logits: Tensor, gt_labels: Tensor, ious: Tensor, quality_logits: Tensor
    ) -> Tensor:
        """
        (N, R, C) class logits, (N, R) labels, (P,) IoUs, (N, R, 1) quality logits -> summed loss.
        """
        targets = dense_class_targets(gt_labels, self.num_classes, ious)
        return fused_quality_focal_loss(pred_logits, quality_logits, targets, self.beta).sum()


class FocalLoss:
    """Focal Loss on 0/1 labels (ATSS, FCOS, RetinaNet); the IoUs are not its business."""

    name = "loss_cls"

    def __init__(self, num_classes: int, alpha: float = 0.25, gamma: float = 2.0):
        self.num_classes, self.alpha, self.gamma = num_classes, alpha, gamma

    def __call__(
        self, pred_logits: Tensor, gt_labels: Tensor, ious: Tensor, quality_logits=None
    ) -> Tensor:
        targets = dense_class_targets(gt_labels, self.num_classes)
        return sigmoid_focal_loss(pred_logits, targets, self.alpha, self.gamma).sum()


# weight of each positive in the GIoU and DFL losses: f((P, C) detached scores,
# (P,) centerness) -> (P,)
def _score_weights(pos_scores: Tensor, centerness: Tensor) -> Tensor:
    return pos_scores.float().max(dim=1).values


def _centerness_weights(pos_scores: Tensor, centerness: Tensor) -> Tensor:
    return centerness


def _unit_weights(pos_scores: Tensor, centerness: Tensor) -> Tensor:
    return torch.ones_like(centerness)


# target of a separate quality branch: f((P,) IoUs, (P,) centerness) -> (P,)
def _iou_target(ious: Tensor, centerness: Tensor) -> Tensor:
    return ious


def _centerness_target(ious: Tensor, centerness: Tensor) -> Tensor:
    return centerness


def check_quality(quality: str, box_representation: str) -> None:
    """
    ValueError unless ``quality`` is one of :data:`QUALITIES` and fits the box
    representation: "dgqp" reads the edge distributions, so it needs "distribution".
    """
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    if box_representation not in BOX_REPRESENTATIONS:
        raise ValueError(
            f"box_representation must be one of {BOX_REPRESENTATIONS}, got {box_representation!r}"
        )
    if quality == "dgqp" and box_representation != "distribution":
        raise ValueError(
            "quality='dgqp' predicts the quality from the edge distributions: it needs a "
            "DistributionBox2BoxTransform (box_representation='distribution')"
        )


@dataclass(frozen=True)
class GFLVariant:
    """
    One point of the paper's ablation space, validated on construction.

    Attributes:
        cls_loss: "qfl" (Quality Focal Loss on the joint classification-IoU
            score) or "focal" (Focal Loss on 0/1 labels); it follows from the
            quality, so "auto" (the default) is "qfl" with a joint quality
            ("joint", "dgqp") and "focal" otherwise.
        quality: "joint" (in the classification score; needs "qfl"),
            "dgqp" (GFL V2: the joint score times a quality predicted from the
            edge distributions' statistics, trained together by QFL on the
            product; needs "qfl" and "distribution"), "centerness" or "iou" (a
            separate branch trained with BCE on the positives, multiplied into
            the score at test time as in ATSS/FCOS), or "none".
        box_representation: "distribution" (general distribution, decoded by
            the integral) or "dirac" (one distance per edge).
        box_loss_weighting: weight of each positive in GIoU and DFL: "score"
            (detached max predicted score, GFL; with "dgqp" the fused score),
            "centerness" (the centerness target, ATSS) or "none"; "auto" is
            "score" with a joint quality ("joint", "dgqp"), "centerness" otherwise.
    """

    cls_loss: str = "auto"
    quality: str = "joint"
    box_representation: str = "distribution"
    box_loss_weighting: str = "auto"

    def __post_init__(self):
        for name, allowed in (
            ("cls_loss", CLS_LOSSES),
            ("quality", QUALITIES),
            ("box_representation", BOX_REPRESENTATIONS),
            ("box_loss_weighting", BOX_LOSS_WEIGHTINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        # QFL's target is the localisation quality, so the quality decides the loss
        implied = "qfl" if self.quality in JOINT_QUALITIES else "focal"
        if self.cls_loss == "auto":
            object.__setattr__(self, "cls_loss", implied)
        elif self.cls_loss != implied:
            raise ValueError(
                f"cls_loss={self.cls_loss!r} with quality={self.quality!r}: "
                "the classification loss follows the "
                "quality (QFL trains the joint quality 'joint' or 'dgqp'; "
                "Focal Loss goes with 'centerness', 'iou' "
                f"or 'none'): leave cls_loss='auto' and set the quality, "
                "e.g. quality='none' for Focal Loss alone"
            )
        check_quality(self.quality, self.box_representation)
        if self.box_loss_weighting == "auto":
            weighting = "score" if self.quality in JOINT_QUALITIES else "centerness"
            object.__setattr__(self, "box_loss_weighting", weighting)

    @property
    def has_quality_branch(self) -> bool:
        """A separate quality branch (centerness, IoU), trained by its own loss."""
        return self.quality in SEPARATE_QUALITIES

    @property
    def has_quality_predictor(self) -> bool:
        """GFL V2's distribution-guided quality, trained through the fused score's QFL."""
        return self.quality == "dgqp"

    @property
    def min_box_normalizer(self) -> float:
        """
        Floor of the box losses' normaliser (the sum of the positives' weights,
        averaged over workers). V1: 1, as MMDetection's GFL (and the spec). V2:
        none, as the authors' GFocalV2 release divides by the sum itself, so the
        box losses are the weighted means of GIoU and DFL even while the fused
        scores, and so the weights, are small early in training; the tiny
        floor only keeps a batch without positives at 0 / 1e-6 = 0.
        """
        return 1e-6 if self.has_quality_predictor else 1.0

    @property
    def predicts_quality(self) -> bool:
        """Whether the head outputs a quality logit per location, multiplied into the score."""
        return self.has_quality_branch or self.has_quality_predictor

    def classification_loss(
        self, num_classes: int, qfl_beta: float, focal_alpha: float, focal_gamma: float
    ):
        if self.has_quality_predictor:
            return FusedQualityFocalLoss(num_classes, qfl_beta)
        if self.cls_loss == "qfl":
            return QualityFocalLoss(num_classes, qfl_beta)
        return FocalLoss(num_classes, focal_alpha, focal_gamma)

    def box_loss_weights(self) -> Callable[[Tensor, Tensor], Tensor]:
        return {"score": _score_weights, "centerness": _centerness_weights, "none": _unit_weights}[
            self.box_loss_weighting
        ]

    def quality_target(self) -> Optional[Callable[[Tensor, Tensor], Tensor]]:
        return {"iou": _iou_target, "centerness": _centerness_target}.get(self.quality)
