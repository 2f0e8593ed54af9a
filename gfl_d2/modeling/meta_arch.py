"""The GFL meta-architecture: a detectron2 ``DenseDetector``."""

import logging
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import GFL_ARGUMENT_KEYS, LD_ARGUMENT_KEYS
from .atss import ATSSMatcher, atss_labels
from .box_coding import aligned_iou, box2distance, centerness, distance2box
from .distillation import build_teacher, check_teacher, teacher_box_outputs
from .frozen_inference import CPU_INFERENCE_MODES, FrozenCPUInference
from .head import GFLHead
from .input_checks import with_checked_ground_truth
from .losses import distribution_focal_loss, localization_distillation_loss
from .postprocess import (
    class_aware_nms,
    reduce_mean,
    rescale_box_std,
    top_candidates,
    valid_clipped,
)
from .variants import GFLVariant

__all__ = ["GFL"]

logger = logging.getLogger(__name__)


def _check_head_reads_the_model_settings(head: nn.Module, **settings) -> None:
    """
    A head that derives its layout from the model's settings (:class:`GFLHead`)
    must have been given the same values; the configs pass them down by
    interpolation, so only an override of the head's own copy can differ.
    """
    for name, value in settings.items():
        head_value = getattr(head, name, value)
        if head_value != value:
            raise ValueError(
                f"the head was built with {name}={head_value!r} but the model has {name}={value!r}: "
                f"set model.{name} only (the head reads it from the model)"
            )


def _one_anchor_per_location(
    anchor_generator: Optional[nn.Module], strides: List[int], anchor_scale: float
):
    """The given anchor generator, or one ``anchor_scale x stride`` square per location; refuses more than one."""
    if anchor_generator is None:
        anchor_generator = DefaultAnchorGenerator(
            sizes=[[anchor_scale * s] for s in strides],
            aspect_ratios=[1.0],
            strides=strides,
            offset=0.0,
        )
    if any(n != 1 for n in anchor_generator.num_cell_anchors):
        raise ValueError("GFL needs exactly one anchor per location (one size, one aspect ratio)")
    return anchor_generator


class _Positives(NamedTuple):
    """The positive anchors of a batch, decoded in units of their level's stride as in the reference."""

    img: Tensor  # (P,) image index
    anchor: Tensor  # (P,) anchor index (levels concatenated)
    box_regs: Tensor  # (P, D) box outputs
    anchors: Tensor  # (P, 4) anchor boxes, pixels
    gt_boxes: Tensor  # (P, 4) matched boxes, pixels
    centers: Tensor  # (P, 2) anchor centres, pixels
    pred_boxes: Tensor  # (P, 4) decoded boxes, strides
    target_boxes: Tensor  # (P, 4) matched boxes, strides
    ious: Tensor  # (P,) IoU of the detached predicted boxes with their targets (QFL's targets)


@META_ARCH_REGISTRY.register()
class GFL(DenseDetector):
    """
    Generalized Focal Loss V1 (:paper:`gfl`): a joint classification-IoU score
    trained with Quality Focal Loss, general edge distributions trained with
    Distribution Focal Loss and GIoU on the integral, and ATSS assignment.
    With ``quality="dgqp"`` it is GFL V2: the score is multiplied by a quality
    predicted from the edge distributions' statistics, and QFL trains the
    product.

    The paper's ablation axes (``cls_loss``, ``quality``, ``box_representation``,
    ``box_loss_weighting``) are settings of this one model, resolved once into
    a :class:`GFLVariant`; the variants are config files
    (``configs/Synthetic/Ablations/``). Each is one setting: the head reads
    ``reg_max``, ``box_representation`` and ``quality`` from the model.

    Args:
        backbone: a backbone whose features ``head_in_features`` feed the head.
        head: a head whose ``forward(features)`` returns ``[cls_logits,
            box_regs]`` (+ ``[quality_logits]``) per level, e.g. :class:`GFLHead`
            built with this model's ``reg_max``, ``box_representation`` and
            ``quality`` (checked).
        anchor_generator: one ``anchor_scale x stride`` square per location
            (default: from the backbone's strides).
        anchor_matcher: label assignment; default ``ATSSMatcher(topk=9)``.
        num_classes: number of foreground classes.
        reg_max: n, the largest bin of each edge distribution (n+1 bins).
        bin_width: Δ, the spacing of the bins in units of stride.
        anchor_scale: anchor side / stride (GFL's octave base scale, 8).
        qfl_beta: β of Quality Focal Loss.
        cls_loss, quality, box_representation, box_loss_weighting: the
            paper's ablation axes, see :class:`GFLVariant`.
        focal_loss_alpha, focal_loss_gamma: of Focal Loss (``cls_loss="focal"``).
        loss_*_weight: weights of the losses (classification (QFL or Focal
            Loss) 1, GIoU 2.0, DFL 0.25, separate quality 1.0).
            ``loss_dfl_weight=0`` turns DFL off.
        test_*: inference filtering: score threshold, top-k (location, class)
            pairs per level, NMS IoU; max_detections_per_image after NMS.
        output_box_distributions: add ``pred_box_dists`` (N, 4, n+1), each
            edge's distribution over its bins, and ``pred_box_std`` (N, 4),
            in output-image pixels, to the results (not with "dirac").
            A model with a quality ("dgqp", "centerness", "iou") always adds
            ``pred_quality`` (N,), the quality that multiplied the score.
        size_divisibility: pad images to a multiple of this (``None``: the
            backbone's, 128 with P7; the released models used 32).
        cpu_inference: "eager" (default) or "frozen": inference on the CPU
            (eval mode, no gradients, no autocast) runs the backbone and head
            through a frozen trace for oneDNN, equal to eager up to float32
            rounding (:mod:`gfl_d2.modeling.frozen_inference`).
        pixel_mean, pixel_std: normalisation, in the channel order of
            ``input_format``.
        teacher: a trained GFL model (:func:`~gfl_d2.modeling.distillation.build_teacher`)
            whose edge distributions this model learns by Localization
            Distillation while training (``loss_ld``); it must have the same
            n, Δ, anchors, levels and classes (checked). It is frozen, in eval
            mode, outside this module's tree: in no ``state_dict`` (the
            checkpoints are a plain GFL's), no ``parameters()`` (the optimizer,
            DDP), moved by ``.to()`` with the model.
        loss_ld_weight, ld_temperature: LD's weight (0.25) and temperature T
            (10), as in MMDetection's ``LDHead``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[List[str]] = None,
        anchor_generator: Optional[nn.Module] = None,
        anchor_matcher: Optional[ATSSMatcher] = None,
        num_classes: int,
        reg_max: int = 16,
        bin_width: float = 1.0,
        anchor_scale: float = 8.0,
        cls_loss: str = "auto",
        quality: str = "joint",
        box_representation: str = "distribution",
        box_loss_weighting: str = "auto",
        qfl_beta: float = 2.0,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25,
        loss_quality_weight: float = 1.0,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        output_box_distributions: bool = True,
        size_divisibility: Optional[int] = None,
        cpu_inference: str = "eager",
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "RGB",
        teacher: Optional[nn.Module] = None,
        loss_ld_weight: float = 0.25,
        ld_temperature: float = 10.0,
    ):
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.num_classes = num_classes
        self.variant = GFLVariant(cls_loss, quality, box_representation, box_loss_weighting)
        self.box2box_transform = self.variant.box_transform(reg_max, bin_width, anchor_scale)
        _check_head_reads_the_model_settings(
            head, reg_max=reg_max, box_representation=box_representation, quality=quality
        )
        strides = [backbone.output_shape()[k].stride for k in self.head_in_features]
        self.anchor_generator = _one_anchor_per_location(anchor_generator, strides, anchor_scale)
        self.anchor_matcher = anchor_matcher if anchor_matcher is not None else ATSSMatcher(topk=9)

        self.cls_loss = self.variant.classification_loss(
            num_classes, qfl_beta, focal_loss_alpha, focal_loss_gamma
        )
        self.box_loss_weights = self.variant.box_loss_weights()
        self.quality_target = self.variant.quality_target()
        self.loss_cls_weight, self.loss_bbox_weight = loss_cls_weight, loss_bbox_weight
        # DFL trains distributions: a Dirac model has none
        self.loss_dfl_weight = loss_dfl_weight if self.box2box_transform.has_distributions else 0.0
        self.loss_quality_weight = loss_quality_weight

        self.test_score_thresh, self.test_topk_candidates = test_score_thresh, test_topk_candidates
        self.test_nms_thresh, self.max_detections_per_image = (
            test_nms_thresh,
            max_detections_per_image,
        )
        if output_box_distributions and not self.box2box_transform.has_distributions:
            logger.info("GFL: box_representation='dirac' has no edge distributions to output")
            output_box_distributions = False
        self.output_box_distributions = output_box_distributions
        self.size_divisibility, self.input_format = size_divisibility, input_format
        if cpu_inference not in CPU_INFERENCE_MODES:
            raise ValueError(
                f"cpu_inference must be one of {CPU_INFERENCE_MODES}, got {cpu_inference!r}"
            )
        self.cpu_inference = cpu_inference
        self._frozen_cpu = FrozenCPUInference(self.backbone, self.head, self.head_in_features)
        if teacher is not None:
            check_teacher(self, teacher)
            teacher.eval()
            teacher.requires_grad_(False)
        # not a submodule: the teacher stays out of state_dict, parameters() and DDP
        object.__setattr__(self, "_teacher", teacher)
        self.loss_ld_weight, self.ld_temperature = loss_ld_weight, ld_temperature

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The frozen LD teacher, or None."""
        return self._teacher

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half() move the hidden teacher with the student
        teacher = getattr(self, "_teacher", None)  # None while nn.Module / DenseDetector set up
        if teacher is not None:
            teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    @property
    def output_box_distributions(self) -> bool:
        """Whether inference adds ``pred_box_dists`` (N, 4, n+1) and ``pred_box_std`` (N, 4)."""
        return self._output_box_distributions

    @output_box_distributions.setter
    def output_box_distributions(self, value: bool):
        if value and not self.box2box_transform.has_distributions:
            raise ValueError(
                "this GFL model (box_representation='dirac') has no edge distributions to output"
            )
        self._output_box_distributions = bool(value)

    @property
    def _prediction_channels(self) -> List[int]:
        """Channels of the head's outputs, in order: class logits, box outputs, (quality logit)."""
        channels = [self.num_classes, self.box2box_transform.num_outputs]
        return channels + [1] if self.variant.predicts_quality else channels

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        feature_shapes = [backbone.output_shape()[f] for f in cfg.MODEL.GFL.IN_FEATURES]
        g = cfg.MODEL.GFL
        return {
            "backbone": backbone,
            "head": GFLHead(cfg, feature_shapes),
            "head_in_features": g.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "anchor_matcher": ATSSMatcher(topk=g.ATSS_TOPK),
            **{arg: g[key] for arg, key in GFL_ARGUMENT_KEYS.items()},
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "size_divisibility": g.SIZE_DIVISIBILITY or None,
            "cpu_inference": g.CPU_INFERENCE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "teacher": (
                build_teacher(g.LD.TEACHER_CONFIG, g.LD.TEACHER_WEIGHTS, g.LD.TEACHER_OPTS)
                if g.LD.TEACHER_CONFIG
                else None
            ),
            **{arg: g.LD[key] for arg, key in LD_ARGUMENT_KEYS.items()},
        }

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if self.training and not torch.jit.is_scripting():
            batched_inputs = with_checked_ground_truth(
                batched_inputs, self.num_classes, self.device
            )
        outputs = (
            self._frozen_forward(batched_inputs)
            if self._runs_frozen()
            else super().forward(batched_inputs)
        )
        if self.training or torch.jit.is_scripting() or not self.output_box_distributions:
            return outputs
        return rescale_box_std(outputs, batched_inputs)

    def _runs_frozen(self) -> bool:
        """Whether this call runs the frozen backbone and head (``cpu_inference="frozen"``, see the class)."""
        return (
            self.cpu_inference == "frozen"
            and not self.training
            and self.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
        )

    def _frozen_forward(
        self, batched_inputs: List[Dict[str, Tensor]]
    ) -> List[Dict[str, Instances]]:
        """DenseDetector's inference, with the backbone and head run by :class:`FrozenCPUInference`."""
        images = self.preprocess_image(batched_inputs)
        features, predictions = self._frozen_cpu(images.tensor)
        results = self.forward_inference(images, features, predictions)
        return [
            {
                "instances": detector_postprocess(
                    r, x.get("height", size[0]), x.get("width", size[1])
                )
            }
            for r, x, size in zip(results, batched_inputs, images.image_sizes)
        ]

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        if self.size_divisibility is None:
            return super().preprocess_image(batched_inputs)
        images = [self._move_to_current_device(x["image"]) for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        return ImageList.from_tensors(
            images, self.size_divisibility, padding_constraints=self.backbone.padding_constraints
        )

    # ------------------------------------------------------------------ training
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_box_regs, *pred_quality_logits = self._transpose_dense_predictions(
            predictions, self._prediction_channels
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        teacher_box_regs = None
        if self._teacher is not None:
            teacher_box_regs = teacher_box_outputs(self._teacher, images.tensor, self)
        return self.losses(
            anchors,
            pred_logits,
            gt_labels,
            pred_box_regs,
            gt_boxes,
            *pred_quality_logits,
            teacher_box_regs=teacher_box_regs,
        )

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """ATSS assignment: per image, (R,) classes (``num_classes``: background) and (R, 4) matched boxes."""
        return atss_labels(self.anchor_matcher, anchors, gt_instances, self.num_classes)

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_box_regs: List[Tensor],
        gt_boxes: List[Tensor],
        pred_quality_logits: Optional[List[Tensor]] = None,
        teacher_box_regs: Optional[List[Tensor]] = None,
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_logits: per level, (N, R_l, C) classification (joint
                classification-IoU) logits.
            gt_labels: per image, (R,) from :meth:`label_anchors`.
            pred_box_regs: per level, (N, R_l, D) box outputs (D = 4(n+1)
                distribution logits, or 4 distances).
            gt_boxes: per image, (R, 4) matched boxes.
            pred_quality_logits: per level, (N, R_l, 1), with a quality branch
                or the distribution-guided quality predictor.
            teacher_box_regs: per level, (N, R_l, D) an LD teacher's box
                outputs on the same batch, or None.

        Returns:
            ``loss_qfl`` (``loss_cls`` with Focal Loss; with "dgqp" QFL on
            ``sigmoid(logits) * sigmoid(quality)``) and ``loss_quality`` (a
            separate quality branch), normalised by the number of positives;
            ``loss_bbox``, ``loss_dfl`` (and ``loss_ld`` with a teacher) from
            :meth:`box_losses`. Weights applied, normalisers averaged over workers.
        """
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / len(gt_labels))
        pos_normalizer = reduce_mean(num_pos.float()).clamp(min=1.0)

        pred_logits = torch.cat(pred_logits, dim=1)  # (N, R, C)
        quality_logits = (
            None if pred_quality_logits is None else torch.cat(pred_quality_logits, dim=1)
        )  # (N, R, 1)
        pos = self.decode_positives(pos_mask, anchors, pred_box_regs, gt_boxes)
        # V2: QFL on the fused score also reaches the distributions, through the quality predictor
        fused = quality_logits if self.variant.has_quality_predictor else None
        loss_cls = self.cls_loss(pred_logits, gt_labels, pos.ious, fused)
        losses = {self.cls_loss.name: loss_cls * self.loss_cls_weight / pos_normalizer}

        if fused is not None and len(pos.img):
            # V2's predicted quality at the positives: its spread shows whether the predictor has learned yet
            quality = quality_logits[pos.img, pos.anchor, 0].detach().float().sigmoid()
            get_event_storage().put_scalars(
                dgqp_quality_mean=quality.mean().item(),
                dgqp_quality_std=quality.std().item() if len(quality) > 1 else 0.0,
            )
        ctr_targets = centerness(box2distance(pos.centers, pos.gt_boxes))  # (P,)
        teacher_pos = (
            None
            if teacher_box_regs is None
            else torch.cat(teacher_box_regs, dim=1)[pos.img, pos.anchor]
        )
        losses.update(self.box_losses(pos, pred_logits, fused, ctr_targets, teacher_pos))
        if (
            self.variant.has_quality_branch
        ):  # a separate centerness / IoU branch, BCE on the positives
            pos_quality = quality_logits[pos.img, pos.anchor, 0].float()  # (P,)
            targets = self.quality_target(pos.ious, ctr_targets)
            loss_quality = F.binary_cross_entropy_with_logits(pos_quality, targets, reduction="sum")
            losses["loss_quality"] = loss_quality * self.loss_quality_weight / pos_normalizer
        return losses

    def decode_positives(
        self,
        pos_mask: Tensor,
        anchors: List[Boxes],
        pred_box_regs: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> _Positives:
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
        pos_gt_boxes = torch.stack(gt_boxes)[pos_img, pos_anchor].float()  # (P, 4)
        centers, strides = self.box2box_transform.centers_and_strides(pos_anchors)
        pred_boxes = distance2box(
            centers / strides, self.box2box_transform.decode(pos_box_regs).distances
        )
        target_boxes = pos_gt_boxes / strides
        ious = aligned_iou(pred_boxes.detach(), target_boxes)  # (P,)
        return _Positives(
            pos_img,
            pos_anchor,
            pos_box_regs,
            pos_anchors,
            pos_gt_boxes,
            centers,
            pred_boxes,
            target_boxes,
            ious,
        )

    def box_losses(
        self,
        pos: _Positives,
        pred_logits: Tensor,
        fused: Optional[Tensor],
        ctr_targets: Tensor,
        teacher_pos: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """
        GIoU (``loss_bbox``) and DFL (``loss_dfl``), each positive weighted
        (GFL: by its detached score, V2: the fused one; ATSS: its centerness),
        normalised by the sum of the weights (at least
        ``GFLVariant.min_box_normalizer``).

        Args:
            pos: from :meth:`decode_positives`.
            pred_logits: (N, R, C) class logits.
            fused: (N, R, 1) V2's quality logits, else None.
            ctr_targets: (P,) the positives' centerness targets.
            teacher_pos: (P, D) an LD teacher's box outputs at the positives:
                adds ``loss_ld``, weighted per positive as the box losses are and,
                as in MMDetection's ``LDHead``, summed over the positives' edges
                and divided by 4 (not by the positives' weights).
        """
        pos_scores = pred_logits.detach()[pos.img, pos.anchor].float().sigmoid()  # (P, C)
        if fused is not None:
            pos_scores = pos_scores * fused.detach()[pos.img, pos.anchor].float().sigmoid()
        weights = self.box_loss_weights(pos_scores, ctr_targets)  # (P,)
        box_normalizer = reduce_mean(weights.sum()).clamp(min=self.variant.min_box_normalizer)
        loss_giou = giou_loss(pos.pred_boxes, pos.target_boxes, reduction="none")
        losses = {"loss_bbox": (loss_giou * weights).sum() * self.loss_bbox_weight / box_normalizer}
        if self.loss_dfl_weight > 0:
            dfl_targets = self.box2box_transform.encode(pos.anchors, pos.gt_boxes)  # (P, 4) in bins
            loss_dfl = distribution_focal_loss(
                pos.box_regs.unflatten(-1, (4, -1)), dfl_targets
            ).mean(dim=1)
            losses["loss_dfl"] = (loss_dfl * weights).sum() * self.loss_dfl_weight / box_normalizer
        if teacher_pos is not None:
            loss_ld = localization_distillation_loss(
                pos.box_regs.unflatten(-1, (4, -1)),
                teacher_pos.unflatten(-1, (4, -1)),
                self.ld_temperature,
            )  # (P, 4)
            losses["loss_ld"] = (loss_ld * weights[:, None]).sum() * self.loss_ld_weight / 4
        return losses

    # ----------------------------------------------------------------- inference
    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ):
        pred_logits, pred_box_regs, *pred_quality_logits = self._transpose_dense_predictions(
            predictions, self._prediction_channels
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

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_box_regs: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
        pred_quality: Optional[Tensor] = None,
    ) -> Instances:
        """
        DenseDetector's per-level filtering (score threshold, then the top-k
        (location, class) pairs), decoding the kept boxes (and keeping their
        edge distributions and quality).

        Args:
            anchors: Boxes (R_l, 4) of the level.
            pred_scores: (R_l, C) scores.
            pred_box_regs: (R_l, D) box outputs.
            pred_quality: (R_l, 1) the quality factor of the scores, if any.
        """
        pred_scores, anchor_idxs, classes_idxs = top_candidates(
            pred_scores, score_thresh, topk_candidates
        )

        centers, strides = self.box2box_transform.centers_and_strides(
            anchors.tensor[anchor_idxs].float()
        )
        decoded = self.box2box_transform.decode(pred_box_regs[anchor_idxs])
        result = Instances(
            image_size,
            pred_boxes=Boxes(distance2box(centers, decoded.distances * strides)),
            scores=pred_scores,
            pred_classes=classes_idxs,
        )
        if self.output_box_distributions:
            result.pred_box_dists = decoded.probs  # (K, 4, n+1)
            result.pred_box_std = decoded.std * strides  # (K, 4) in input pixels
        if pred_quality is not None:
            result.pred_quality = pred_quality[anchor_idxs, 0]  # (K,)
        return result

    def inference_single_image(
        self,
        anchors: List[Boxes],
        pred_scores: List[Tensor],
        pred_box_regs: List[Tensor],
        image_size: Tuple[int, int],
        pred_quality: Optional[List[Tensor]] = None,
    ) -> Instances:
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_scores: per level, (R_l, C) scores (sigmoid of the logits,
                times the quality if any).
            pred_box_regs: per level, (R_l, D) box outputs.
            image_size: (H, W) of the input before padding.
            pred_quality: per level, (R_l, 1) the quality in the scores, if any.

        Returns:
            Instances with ``pred_boxes``, ``scores``, ``pred_classes`` (and
            ``pred_box_dists``, ``pred_box_std`` in input-image pixels if
            ``output_box_distributions``; ``pred_quality`` with a quality).
        """
        qualities: List[Optional[Tensor]] = (
            [None] * len(anchors) if pred_quality is None else list(pred_quality)
        )
        levels = [
            self._decode_per_level_predictions(
                a, s, r, self.test_score_thresh, self.test_topk_candidates, image_size, q
            )
            for a, s, r, q in zip(anchors, pred_scores, pred_box_regs, qualities)
        ]
        pred = levels[0].cat(levels)
        pred = valid_clipped(pred, image_size)
        keep = class_aware_nms(
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh, image_size
        )
        return pred[keep[: self.max_detections_per_image]]
