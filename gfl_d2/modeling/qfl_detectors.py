"""
Quality Focal Loss as a drop-in for detectron2's own dense detectors (paper
Table 1b): ``QFLRetinaNet`` and ``QFLFCOS`` are detectron2's ``RetinaNet`` and
``FCOS`` with their Focal Loss on hard labels replaced by QFL on a joint
classification-IoU target. Everything else (heads, anchors, matching, box
losses, centerness, inference) is detectron2's, inherited unchanged.
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes
from torch import Tensor

from .box_coding import aligned_iou
from .losses import dense_class_targets, quality_focal_loss

__all__ = ["QFLRetinaNet", "QFLFCOS"]


class _QualityFocalLossMixin:
    """
    Replaces the classification term of a detectron2 dense detector's
    ``losses`` by QFL. The detector's own ``losses`` still computes its box
    (and centerness) terms and updates its loss normaliser, which QFL then
    shares, so that only the classification target and loss differ.
    """

    cls_loss_key: str

    def __init__(self, *, qfl_beta: float = 2.0, **kwargs):
        """
        Args:
            qfl_beta: β of QFL.
            kwargs: the detector's own arguments (its focal-loss α/γ are unused).
        """
        super().__init__(**kwargs)
        self.qfl_beta = qfl_beta

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        *args,
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_logits: per level, (N, R_l, C) logits, now a joint
                classification-IoU score.
            gt_labels: per image, (R,) class, ``num_classes`` for background,
                -1 for ignored anchors.
            pred_anchor_deltas: per level, (N, R_l, 4) box deltas.
            gt_boxes: per image, (R, 4) matched boxes.
            args: the rest of the parent's ``losses`` arguments (FCOS's centerness).

        Returns:
            the parent's loss dict with its classification loss (same key)
            replaced by QFL, normalised by the parent's normaliser.
        """
        losses = super().losses(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, *args
        )
        labels = torch.stack(gt_labels)  # (N, R)
        pos_img, pos_anchor = ((labels >= 0) & (labels != self.num_classes)).nonzero(as_tuple=True)
        with torch.no_grad():
            anchors_pos = Boxes.cat(anchors).tensor[pos_anchor]  # (P, 4)
            deltas_pos = cat(pred_anchor_deltas, dim=1)[pos_img, pos_anchor]  # (P, 4)
            pred_boxes = self.box2box_transform.apply_deltas(
                deltas_pos.float(), anchors_pos.float()
            )
            quality = aligned_iou(pred_boxes, torch.stack(gt_boxes)[pos_img, pos_anchor].float())
        targets = dense_class_targets(labels, self.num_classes, quality)  # (N, R, C)
        valid = labels >= 0  # ignored anchors (RetinaNet's IoU in [0.4, 0.5)) take no loss
        loss = quality_focal_loss(
            cat(pred_logits, dim=1)[valid], targets[valid], self.qfl_beta
        ).sum()
        losses[self.cls_loss_key] = loss / self.loss_normalizer
        return losses


@META_ARCH_REGISTRY.register()
class QFLRetinaNet(_QualityFocalLossMixin, RetinaNet):
    """detectron2's :class:`RetinaNet` trained with Quality Focal Loss."""

    cls_loss_key = "loss_cls"

    @configurable  # for yacs: META_ARCHITECTURE "QFLRetinaNet", MODEL.RETINANET.QFL_BETA
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["qfl_beta"] = cfg.MODEL.RETINANET.get("QFL_BETA", 2.0)
        return ret


class QFLFCOS(_QualityFocalLossMixin, FCOS):
    """
    detectron2's :class:`FCOS` trained with Quality Focal Loss. Its
    centerness branch is kept (trained and multiplied into the score at test
    time as in FCOS), so that QFL is the only change.
    """

    cls_loss_key = "loss_fcos_cls"
