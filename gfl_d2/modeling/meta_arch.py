"""The GFL meta-architecture: a detectron2 ``DenseDetector``."""

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss
from torch import Tensor, nn
from torch.nn import functional as F

from .atss import ATSSMatcher, atss_labels
from .box_coding import aligned_iou, anchor_points, box2distance, centerness, distance2box
from .head import GFLHead
from .losses import (
    LocalizationTargets,
    distribution_focal_loss,
    localization_distillation_loss,
    reduce_mean,
)
from .postprocess import class_aware_nms, decode_candidates, rescale_box_std, valid_clipped
from .variants import GFLVariant
from .yacs_keys import gfl_yacs_arguments, yacs_key

__all__ = ["GFL"]


def _check_anchors(anchor_generator: nn.Module, feature_strides: List[int]) -> None:
    """GFL needs one anchor per location, on the levels of the head's features."""
    if any(n != 1 for n in anchor_generator.num_cell_anchors):
        raise ValueError("GFL needs exactly one anchor per location (one size, one aspect ratio)")
    strides = list(anchor_generator.strides)
    if strides != list(feature_strides):
        raise ValueError(
            f"the anchor generator's strides {strides} differ from the strides of the head's "
            f"features {list(feature_strides)}"
        )


class _Positives(NamedTuple):
    """The positive anchors of a batch, decoded in units of their level's stride."""

    img: Tensor  # (P,) image index
    anchor: Tensor  # (P,) anchor index (levels concatenated)
    box_regs: Tensor  # (P, D) box outputs
    centers: Tensor  # (P, 2) anchor centres, pixels
    strides: Tensor  # (P, 1) their levels' strides
    gt_boxes: Tensor  # (P, 4) matched boxes, pixels
    pred_boxes: Tensor  # (P, 4) decoded boxes, strides
    target_boxes: Tensor  # (P, 4) matched boxes, strides
    ious: Tensor  # (P,) IoU of the detached predicted boxes with their targets (QFL's targets)


@META_ARCH_REGISTRY.register()
class GFL(DenseDetector):
    """
    Generalized Focal Loss (:paper:`gfl`): a joint classification-IoU score
    trained with Quality Focal Loss, general edge distributions trained with
    Distribution Focal Loss and GIoU on the integral, and ATSS assignment.
    With a head of quality "dgqp" it is GFL V2: the score is multiplied by a
    quality predicted from the edge distributions, and QFL trains the product.

    The head is the one source of the output layout: this model decodes with
    ``head.box2box_transform`` and trains ``head.quality``; with its own
    ``cls_loss`` and ``box_loss_weighting`` they make the :class:`GFLVariant`
    (the paper's ablation axes; the variants are config files).

    Args:
        backbone: a backbone whose features ``head_in_features`` feed the head.
        head: a head (:class:`GFLHead`) whose ``forward(features)`` returns
            ``[cls_logits, box_regs]`` (+ ``[quality_logits]``) per level, with
            ``box2box_transform``, ``quality`` and ``output_channels``.
        anchor_generator: one anchor per location; its strides are the levels'
            strides, in which the box outputs are measured.
        anchor_matcher: label assignment (:class:`ATSSMatcher`).
        num_classes: number of foreground classes.
        cls_loss, box_loss_weighting: see :class:`GFLVariant`.
        qfl_beta: β of Quality Focal Loss.
        focal_loss_alpha, focal_loss_gamma: of Focal Loss (``cls_loss="focal"``).
        loss_*_weight: weights of the losses; ``loss_dfl_weight=0`` turns DFL off.
        test_*: inference: score threshold, top-k (location, class) pairs per
            level, NMS IoU; max_detections_per_image after NMS.
        output_box_distributions: add ``pred_box_dists`` (N, 4, n+1) and
            ``pred_box_std`` (N, 4, output-image pixels) to the results; needs
            edge distributions. A model with a quality always adds
            ``pred_quality`` (N,), the quality that multiplied the score.
        size_divisibility: pad images to a multiple of this (the released
            models: 32; ``None``: the backbone's).
        pixel_mean, pixel_std: normalisation, in the channel order of
            ``input_format``.
    """

    @configurable
    def __init__(
        self, *, backbone: Backbone, head: nn.Module, head_in_features: List[str],
        anchor_generator: nn.Module, anchor_matcher: ATSSMatcher, num_classes: int,
        cls_loss: str = "auto", box_loss_weighting: str = "auto",
        qfl_beta: float = 2.0, focal_loss_alpha: float = 0.25, focal_loss_gamma: float = 2.0,
        loss_cls_weight: float = 1.0, loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25, loss_quality_weight: float = 1.0,
        test_score_thresh: float = 0.05, test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6, max_detections_per_image: int = 100,
        output_box_distributions: bool = True, size_divisibility: Optional[int] = 32,
        pixel_mean: Tuple[float, ...], pixel_std: Tuple[float, ...], input_format: str = "RGB",
    ):  # fmt: skip
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.num_classes = num_classes
        self.box2box_transform = head.box2box_transform
        representation = "distribution" if self.box2box_transform.has_distributions else "dirac"
        self.variant = GFLVariant(cls_loss, head.quality, representation, box_loss_weighting)
        shapes = backbone.output_shape()
        _check_anchors(anchor_generator, [shapes[f].stride for f in self.head_in_features])
        self.anchor_generator, self.anchor_matcher = anchor_generator, anchor_matcher
        self.cls_loss = self.variant.classification_loss(
            num_classes, qfl_beta, focal_loss_alpha, focal_loss_gamma
        )
        self.box_loss_weights = self.variant.box_loss_weights()
        self.quality_target = self.variant.quality_target()
        self.loss_cls_weight, self.loss_bbox_weight = loss_cls_weight, loss_bbox_weight
        # DFL trains distributions: a Dirac model has none
        self.loss_dfl_weight = loss_dfl_weight if representation == "distribution" else 0.0
        self.loss_quality_weight = loss_quality_weight
        self.test_score_thresh, self.test_topk_candidates = test_score_thresh, test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.output_box_distributions = output_box_distributions
        self.size_divisibility, self.input_format = size_divisibility, input_format

    @property
    def output_box_distributions(self) -> bool:
        """Whether inference adds ``pred_box_dists`` (N, 4, n+1) and ``pred_box_std`` (N, 4)."""
        return self._output_box_distributions

    @output_box_distributions.setter
    def output_box_distributions(self, value: bool):
        if value and not self.box2box_transform.has_distributions:
            raise ValueError(
                f"output_box_distributions: the head's {self.box2box_transform} has no edge "
                "distributions to output; set output_box_distributions=False"
            )
        self._output_box_distributions = bool(value)

    @classmethod
    def from_config(cls, cfg):
        g = cfg.MODEL.GFL
        backbone = build_backbone(cfg)
        feature_shapes = [backbone.output_shape()[f] for f in g.IN_FEATURES]
        settings = {arg: g[yacs_key(arg)] for arg in gfl_yacs_arguments()}
        return {
            "backbone": backbone,
            "head": cls.head_from_config(cfg, feature_shapes),
            "head_in_features": g.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "anchor_matcher": ATSSMatcher(topk=g.ATSS_TOPK),
            **settings,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "size_divisibility": g.SIZE_DIVISIBILITY or None,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    @classmethod
    def head_from_config(cls, cfg, feature_shapes: List[ShapeSpec]) -> nn.Module:
        """The yacs head on features of ``feature_shapes`` (a subclass builds its own)."""
        return GFLHead(cfg, feature_shapes)

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        outputs = super().forward(batched_inputs)
        if self.training or torch.jit.is_scripting() or not self.output_box_distributions:
            return outputs
        # detector_postprocess rescales the boxes to the requested size: the std follows
        return rescale_box_std(outputs, batched_inputs)

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        if self.size_divisibility is None:
            return super().preprocess_image(batched_inputs)
        images = [self._move_to_current_device(x["image"]) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(
            images, self.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )

    def level_strides(self, anchors: List[Boxes]) -> Tensor:
        """(R,) the stride of each anchor's level (levels concatenated), float32."""
        device, strides = anchors[0].tensor.device, self.anchor_generator.strides
        levels = [torch.full((len(a),), float(s), device=device) for a, s in zip(anchors, strides)]
        return torch.cat(levels)

    # ------------------------------------------------------------------ training
    def forward_training(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]],
        gt_instances: List[Instances], distillation: Optional[LocalizationTargets] = None,
    ) -> Dict[str, Tensor]:  # fmt: skip
        """DenseDetector's training step; ``distillation``: a teacher's box outputs (LD)."""
        pred_logits, pred_box_regs, *pred_quality_logits = self._transpose_dense_predictions(
            predictions, self.head.output_channels
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(
            anchors, pred_logits, gt_labels, pred_box_regs, gt_boxes, *pred_quality_logits,
            distillation=distillation,
        )  # fmt: skip

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """ATSS: per image, (R,) classes (``num_classes``: background) and (R, 4) matched boxes."""
        return atss_labels(self.anchor_matcher, anchors, gt_instances, self.num_classes)

    def losses(
        self, anchors: List[Boxes], pred_logits: List[Tensor], gt_labels: List[Tensor],
        pred_box_regs: List[Tensor], gt_boxes: List[Tensor],
        pred_quality_logits: Optional[List[Tensor]] = None,
        distillation: Optional[LocalizationTargets] = None,
    ) -> Dict[str, Tensor]:  # fmt: skip
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_logits: per level, (N, R_l, C) classification (joint) logits.
            gt_labels, gt_boxes: per image, (R,) and (R, 4) from :meth:`label_anchors`.
            pred_box_regs: per level, (N, R_l, D) box outputs.
            pred_quality_logits: per level, (N, R_l, 1), with a quality.
            distillation: an LD teacher's box outputs on the same batch, or None.

        Returns:
            ``loss_qfl`` (``loss_cls`` with Focal Loss; with "dgqp" QFL on
            ``sigmoid(logits) * sigmoid(quality)``) and ``loss_quality`` (a
            separate quality branch), normalised by the number of positives;
            ``loss_bbox``, ``loss_dfl`` (and ``loss_ld``) from :meth:`box_losses`.
            Weights applied, normalisers averaged over workers.
        """
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / len(gt_labels))
        pos_normalizer = reduce_mean(num_pos.float()).clamp(min=1.0)

        pred_logits = torch.cat(pred_logits, dim=1)  # (N, R, C)
        quality_logits = None if pred_quality_logits is None else torch.cat(pred_quality_logits, 1)
        pos = self.decode_positives(pos_mask, anchors, pred_box_regs, gt_boxes)
        # V2: QFL on the fused score also reaches the distributions, through the quality predictor
        dgqp_logits = quality_logits if self.variant.has_quality_predictor else None
        loss_cls = self.cls_loss(pred_logits, gt_labels, pos.ious, dgqp_logits)
        losses = {self.cls_loss.name: loss_cls * self.loss_cls_weight / pos_normalizer}
        if dgqp_logits is not None:
            _log_predicted_quality(dgqp_logits[pos.img, pos.anchor, 0])
        ctr_targets = centerness(box2distance(pos.centers, pos.gt_boxes))  # (P,)
        losses.update(self.box_losses(pos, pred_logits, dgqp_logits, ctr_targets, distillation))
        # a separate centerness / IoU branch: BCE on the positives
        if self.variant.has_quality_branch:
            pos_quality = quality_logits[pos.img, pos.anchor, 0].float()  # (P,)
            targets = self.quality_target(pos.ious, ctr_targets)
            loss_quality = F.binary_cross_entropy_with_logits(pos_quality, targets, reduction="sum")
            losses["loss_quality"] = loss_quality * self.loss_quality_weight / pos_normalizer
        return losses

    def decode_positives(
        self, pos_mask: Tensor, anchors: List[Boxes], pred_box_regs: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> _Positives:  # fmt: skip
        """
        Args:
            pos_mask: (N, R) the positive anchors.
            anchors, pred_box_regs, gt_boxes: as in :meth:`losses`.

        Returns:
            the P positives' outputs, anchors and matched boxes, with their
            boxes decoded in units of stride and QFL's IoU targets.
        """
        pos_img, pos_anchor = pos_mask.nonzero(as_tuple=True)
        pos_box_regs = torch.cat(pred_box_regs, dim=1)[pos_img, pos_anchor]  # (P, D)
        pos_anchors = Boxes.cat(anchors).tensor[pos_anchor].float()  # (P, 4)
        centers, strides = anchor_points(pos_anchors, self.level_strides(anchors)[pos_anchor])
        pos_gt_boxes = torch.stack(gt_boxes)[pos_img, pos_anchor].float()  # (P, 4)
        distances = self.box2box_transform.decode(pos_box_regs).distances
        pred_boxes = distance2box(centers / strides, distances)
        target_boxes = pos_gt_boxes / strides
        ious = aligned_iou(pred_boxes.detach(), target_boxes)  # (P,)
        return _Positives(
            pos_img, pos_anchor, pos_box_regs, centers, strides, pos_gt_boxes, pred_boxes,
            target_boxes, ious,
        )  # fmt: skip

    def box_losses(
        self, pos: _Positives, pred_logits: Tensor, dgqp_logits: Optional[Tensor],
        ctr_targets: Tensor, distillation: Optional[LocalizationTargets] = None,
    ) -> Dict[str, Tensor]:  # fmt: skip
        """
        GIoU (``loss_bbox``) and DFL (``loss_dfl``), each positive weighted
        (GFL: by its detached score, V2: the fused one; ATSS: its centerness),
        normalised by the sum of the weights (at least
        ``GFLVariant.min_box_normalizer``).

        Args:
            pos: from :meth:`decode_positives`.
            pred_logits: (N, R, C) class logits.
            dgqp_logits: (N, R, 1) V2's quality logits, else None.
            ctr_targets: (P,) the positives' centerness targets.
            distillation: an LD teacher's box outputs: adds ``loss_ld`` at the
                positives, weighted per positive as the box losses are and, as in
                MMDetection's ``LDHead``, summed over the edges and divided by 4.
        """
        pos_scores = pred_logits.detach()[pos.img, pos.anchor].float().sigmoid()  # (P, C)
        if dgqp_logits is not None:
            pos_scores = pos_scores * dgqp_logits.detach()[pos.img, pos.anchor].float().sigmoid()
        weights = self.box_loss_weights(pos_scores, ctr_targets)  # (P,)
        box_normalizer = reduce_mean(weights.sum()).clamp(min=self.variant.min_box_normalizer)
        loss_giou = giou_loss(pos.pred_boxes, pos.target_boxes, reduction="none")
        loss_bbox = (loss_giou * weights).sum() * self.loss_bbox_weight / box_normalizer
        losses = {"loss_bbox": loss_bbox}
        if self.loss_dfl_weight > 0:
            dfl_targets = self.box2box_transform.encode(pos.centers, pos.strides, pos.gt_boxes)
            loss_dfl = distribution_focal_loss(pos.box_regs.unflatten(-1, (4, -1)), dfl_targets)
            loss_dfl = (loss_dfl.mean(dim=1) * weights).sum()
            losses["loss_dfl"] = loss_dfl * self.loss_dfl_weight / box_normalizer
        if distillation is not None:
            teacher_pos = torch.cat(distillation.box_regs, dim=1)[pos.img, pos.anchor]  # (P, D)
            loss_ld = localization_distillation_loss(
                pos.box_regs.unflatten(-1, (4, -1)),
                teacher_pos.unflatten(-1, (4, -1)),
                distillation.temperature,
            )  # (P, 4)
            losses["loss_ld"] = (loss_ld * weights[:, None]).sum() * distillation.weight / 4
        return losses

    # ----------------------------------------------------------------- inference
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        pred_logits, pred_box_regs, *pred_quality_logits = self._transpose_dense_predictions(
            predictions, self.head.output_channels
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores = [x[img_idx].sigmoid() for x in pred_logits]
            quality: Optional[List[Tensor]] = None
            if pred_quality_logits:
                # the quality (ATSS's branch, V2's predictor) multiplies the score
                quality = [q[img_idx].sigmoid() for q in pred_quality_logits[0]]
                scores = [s * q for s, q in zip(scores, quality)]
            box_regs = [x[img_idx] for x in pred_box_regs]
            results.append(
                self.inference_single_image(anchors, scores, box_regs, image_size, quality)
            )
        return results

    def inference_single_image(
        self, anchors: List[Boxes], pred_scores: List[Tensor], pred_box_regs: List[Tensor],
        image_size: Tuple[int, int], pred_quality: Optional[List[Tensor]] = None,
    ) -> Instances:  # fmt: skip
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_scores: per level, (R_l, C) scores (times the quality if any).
            pred_box_regs: per level, (R_l, D) box outputs.
            image_size: (H, W) of the input before padding.
            pred_quality: per level, (R_l, 1) the quality in the scores, if any.

        Returns:
            Instances: ``pred_boxes``, ``scores``, ``pred_classes`` (and see
            ``output_box_distributions``; ``pred_quality`` with a quality).
        """
        qualities = [None] * len(anchors) if pred_quality is None else list(pred_quality)
        strides = self.anchor_generator.strides
        levels = [
            decode_candidates(
                self.box2box_transform,
                a,
                st,
                s,
                r,
                image_size,
                q,
                self.test_score_thresh,
                self.test_topk_candidates,
                self.output_box_distributions,
            )  # fmt: skip
            for a, st, s, r, q in zip(anchors, strides, pred_scores, pred_box_regs, qualities)
        ]
        pred = valid_clipped(levels[0].cat(levels), image_size)
        boxes, scores, classes = pred.pred_boxes.tensor, pred.scores, pred.pred_classes
        keep = class_aware_nms(boxes, scores, classes, self.test_nms_thresh, image_size)
        return pred[keep[: self.max_detections_per_image]]


def _log_predicted_quality(quality_logits: Tensor) -> None:
    """V2's predicted quality at the positives, (P,) logits: its spread shows whether it learns."""
    if not len(quality_logits):
        return
    quality = quality_logits.detach().float().sigmoid()
    get_event_storage().put_scalars(
        dgqp_quality_mean=quality.mean().item(),
        dgqp_quality_std=quality.std().item() if len(quality) > 1 else 0.0,
    )
