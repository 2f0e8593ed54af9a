"""The GFL meta-architecture: a detectron2 ``DenseDetector``."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from fvcore.nn import giou_loss
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds

from .atss import ATSSMatcher
from .box_coding import (
    DiracBox2BoxTransform,
    DistributionBox2BoxTransform,
    aligned_iou,
    box2distance,
    centerness,
    distance2box,
    distribution_mean_std,
    edge_distributions,
)
from .head import BOX_REPRESENTATIONS, QUALITY_REPRESENTATIONS, SEPARATE_QUALITIES, GFLHead
from .input_checks import sanitize_gt_instances
from .losses import dense_class_targets, distribution_focal_loss, quality_focal_loss, sigmoid_focal_loss

__all__ = ["GFL"]

logger = logging.getLogger(__name__)


def reduce_mean(tensor: Tensor) -> Tensor:
    """Average a tensor over all workers (a no-op in a single process)."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / world_size


@META_ARCH_REGISTRY.register()
class GFL(DenseDetector):
    """
    Generalized Focal Loss V1 (:paper:`gfl`): a joint classification-IoU score
    trained with Quality Focal Loss, general edge distributions trained with
    Distribution Focal Loss and GIoU on the integral, and ATSS assignment.

    The paper's ablation axes are arguments, so that its baselines are the same
    model with other settings:

    ============================  =========  ============  ===================  =========
    variant                       cls_loss   quality       box_representation   DFL
    ============================  =========  ============  ===================  =========
    GFL (default)                 "qfl"      "joint"       "distribution"       weight>0
    ATSS (the paper's baseline)   "focal"    "centerness"  "dirac"              -
    ATSS + QFL                    "qfl"      "joint"       "dirac"              -
    ATSS + DFL                    "focal"    "centerness"  "distribution"       weight>0
    general distribution, no DFL  any        any           "distribution"       weight 0
    ============================  =========  ============  ===================  =========
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
        qfl_beta: float = 2.0,
        cls_loss: str = "qfl",
        quality: str = "joint",
        box_representation: str = "distribution",
        box_loss_weighting: str = "auto",
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        loss_qfl_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25,
        loss_quality_weight: float = 1.0,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        output_box_distributions: bool = True,
        size_divisibility: Optional[int] = None,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        input_format: str = "RGB",
    ):
        """
        Args:
            backbone: a backbone whose features ``head_in_features`` feed the head.
            head: a head whose ``forward(features)`` returns
                ``[cls_logits, box_dist_logits]`` per level, e.g. :class:`GFLHead`.
            anchor_generator: one square anchor per location, ``anchor_scale x stride``
                on a side. Default: built from the backbone's strides.
            anchor_matcher: label assignment; default ``ATSSMatcher(topk=9)``.
            num_classes: number of foreground classes.
            reg_max: n, the largest bin of each edge distribution (n+1 bins).
            bin_width: Δ, the spacing of the bins in units of stride.
            anchor_scale: anchor side / stride (GFL's octave base scale, 8).
            qfl_beta: β of Quality Focal Loss.
            cls_loss: "qfl" (Quality Focal Loss on the joint classification-IoU
                score) or "focal" (Focal Loss on hard 0/1 labels).
            quality: localisation quality: "joint" (in the classification
                score; needs ``cls_loss="qfl"``), "centerness" or "iou" (a
                separate branch trained with BCE on the positives, multiplied
                into the score at test time as in ATSS/FCOS), or "none".
            box_representation: "distribution" (general distribution, decoded
                by the integral) or "dirac" (one distance per edge, plain
                regression).
            box_loss_weighting: weight of each positive in the GIoU and DFL
                losses: "score" (detached max predicted score, GFL),
                "centerness" (the centerness target, ATSS), "none"; "auto" is
                "score" with a joint quality and "centerness" otherwise.
            focal_loss_alpha, focal_loss_gamma: of Focal Loss (``cls_loss="focal"``).
            loss_*_weight: weights of the losses (QFL or Focal Loss 1, GIoU 2.0,
                DFL 0.25, separate quality 1.0). ``loss_dfl_weight=0`` turns DFL off.
            test_*: inference filtering: score threshold, top-k (location, class)
                pairs per level, NMS IoU; max_detections_per_image after NMS.
            output_box_distributions: add ``pred_box_dists`` (N, 4, n+1), each
                edge's distribution over its bins, and ``pred_box_std`` (N, 4),
                each edge's standard deviation in output-image pixels, to the
                inference results. Turn off for deployment. Ignored (nothing to
                output) with the "dirac" representation.
            size_divisibility: pad images to a multiple of this. ``None`` uses the
                backbone's (128 for an FPN with P7); the released GFL models
                used 32.
            pixel_mean, pixel_std: normalisation, in the channel order of
                ``input_format``.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.num_classes = num_classes
        self.reg_max = int(reg_max)
        self._check_variant(cls_loss, quality, box_representation, box_loss_weighting)
        for name, value in (("reg_max", self.reg_max), ("box_representation", box_representation), ("quality", quality)):
            if getattr(head, name, value) != value:
                raise ValueError(f"head.{name}={getattr(head, name)!r} but GFL {name}={value!r}")
        self.cls_loss = cls_loss
        self.quality = quality
        self.box_representation = box_representation
        if box_loss_weighting == "auto":
            box_loss_weighting = "score" if quality == "joint" else "centerness"
        self.box_loss_weighting = box_loss_weighting

        feature_shapes = backbone.output_shape()
        strides = [feature_shapes[k].stride for k in self.head_in_features]
        if anchor_generator is None:
            anchor_generator = DefaultAnchorGenerator(
                sizes=[[anchor_scale * s] for s in strides], aspect_ratios=[1.0], strides=strides, offset=0.0
            )
        if any(n != 1 for n in anchor_generator.num_cell_anchors):
            raise ValueError("GFL needs exactly one anchor per location (one size, one aspect ratio)")
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher if anchor_matcher is not None else ATSSMatcher(topk=9)
        if box_representation == "distribution":
            self.box2box_transform = DistributionBox2BoxTransform(reg_max, bin_width, anchor_scale)
        else:
            self.box2box_transform = DiracBox2BoxTransform(anchor_scale)
            if output_box_distributions:
                logger.info("GFL: box_representation='dirac' has no edge distributions to output")
            output_box_distributions = False

        self.qfl_beta = qfl_beta
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.loss_qfl_weight = loss_qfl_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_dfl_weight = loss_dfl_weight
        self.loss_quality_weight = loss_quality_weight

        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.output_box_distributions = output_box_distributions
        self.size_divisibility = size_divisibility
        self.input_format = input_format

    @staticmethod
    def _check_variant(cls_loss: str, quality: str, box_representation: str, box_loss_weighting: str):
        if cls_loss not in ("qfl", "focal"):
            raise ValueError(f"cls_loss must be 'qfl' or 'focal', got {cls_loss!r}")
        if quality not in QUALITY_REPRESENTATIONS:
            raise ValueError(f"quality must be one of {QUALITY_REPRESENTATIONS}, got {quality!r}")
        if box_representation not in BOX_REPRESENTATIONS:
            raise ValueError(f"box_representation must be one of {BOX_REPRESENTATIONS}, got {box_representation!r}")
        if box_loss_weighting not in ("auto", "score", "centerness", "none"):
            raise ValueError(
                f"box_loss_weighting must be 'auto', 'score', 'centerness' or 'none', got {box_loss_weighting!r}"
            )
        # QFL's target is the localisation quality, so the two come together
        if (cls_loss == "qfl") != (quality == "joint"):
            raise ValueError(
                f"cls_loss={cls_loss!r} with quality={quality!r}: the joint quality is trained by QFL, "
                "so use cls_loss='qfl' with quality='joint', or cls_loss='focal' with 'centerness', 'iou' or 'none'"
            )

    @property
    def _prediction_channels(self) -> List[int]:
        """Channels of the head's outputs, in order: class logits, box, (quality)."""
        channels = [self.num_classes, self.box2box_transform.num_deltas]
        return channels + [1] if self.quality in SEPARATE_QUALITIES else channels

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        feature_shapes = [backbone_shape[f] for f in cfg.MODEL.GFL.IN_FEATURES]
        g = cfg.MODEL.GFL
        return {
            "backbone": backbone,
            "head": GFLHead(cfg, feature_shapes),
            "head_in_features": g.IN_FEATURES,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "anchor_matcher": ATSSMatcher(topk=g.ATSS_TOPK),
            "num_classes": g.NUM_CLASSES,
            "reg_max": g.REG_MAX,
            "bin_width": g.BIN_WIDTH,
            "anchor_scale": g.ANCHOR_SCALE,
            "qfl_beta": g.QFL_BETA,
            "cls_loss": g.CLS_LOSS,
            "quality": g.QUALITY,
            "box_representation": g.BOX_REPRESENTATION,
            "box_loss_weighting": g.BOX_LOSS_WEIGHTING,
            "focal_loss_alpha": g.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": g.FOCAL_LOSS_GAMMA,
            "loss_qfl_weight": g.LOSS_QFL_WEIGHT,
            "loss_bbox_weight": g.LOSS_BBOX_WEIGHT,
            "loss_dfl_weight": g.LOSS_DFL_WEIGHT,
            "loss_quality_weight": g.LOSS_QUALITY_WEIGHT,
            "test_score_thresh": g.SCORE_THRESH_TEST,
            "test_topk_candidates": g.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": g.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "output_box_distributions": g.OUTPUT_BOX_DISTRIBUTIONS,
            "size_divisibility": g.SIZE_DIVISIBILITY or None,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if self.training and not torch.jit.is_scripting():
            if not all("instances" in x for x in batched_inputs):
                raise ValueError("GFL training needs 'instances' (ground truth) in every input")
            gt, num_clipped, num_dropped = sanitize_gt_instances(batched_inputs, self.num_classes, self.device)
            storage = get_event_storage()
            num_clipped, num_dropped = torch.stack([num_clipped, num_dropped]).tolist()
            storage.put_scalar("gfl/gt_boxes_clipped", num_clipped, smoothing_hint=False)
            storage.put_scalar("gfl/gt_boxes_dropped", num_dropped, smoothing_hint=False)
            if num_dropped > 0:
                log_every_n_seconds(
                    logging.WARNING,
                    f"GFL: dropped {num_dropped} ground-truth boxes with zero or negative width/height "
                    f"(after clipping to the image) at iteration {storage.iter}",
                    n=30,
                    name=__name__,
                )
            batched_inputs = [dict(x, instances=g) for x, g in zip(batched_inputs, gt)]
        outputs = super().forward(batched_inputs)
        if self.training or torch.jit.is_scripting() or not self.output_box_distributions:
            return outputs
        # detector_postprocess rescales the boxes to the requested output size;
        # the edge standard deviations must follow
        for out, inp in zip(outputs, batched_inputs):
            inst = out["instances"]
            in_h, in_w = inp["image"].shape[-2:]
            out_h, out_w = inst.image_size
            sx, sy = out_w / in_w, out_h / in_h
            inst.pred_box_std = inst.pred_box_std * inst.pred_box_std.new_tensor([sx, sy, sx, sy])
        return outputs

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
        pred_logits, pred_deltas, *pred_quality = self._transpose_dense_predictions(
            predictions, self._prediction_channels
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, *pred_quality)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        """
        ATSS assignment, per image.

        Args:
            anchors: per level, Boxes of (R_l, 4) anchors.
            gt_instances: per image, Instances with ``gt_boxes`` and ``gt_classes``.

        Returns:
            gt_labels: per image, (R,) long: class of the matched box, or
                ``num_classes`` for background.
            matched_gt_boxes: per image, (R, 4) matched boxes (meaningless for
                background anchors).
        """
        anchor_tensors = [a.tensor for a in anchors]
        num_anchors = sum(len(a) for a in anchor_tensors)
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            gt = inst.gt_boxes.tensor
            if len(inst) == 0:
                gt_labels.append(torch.full((num_anchors,), self.num_classes, dtype=torch.long, device=gt.device))
                matched_gt_boxes.append(gt.new_zeros((num_anchors, 4)))
                continue
            matched_idxs = self.anchor_matcher(gt, anchor_tensors)
            labels = inst.gt_classes[matched_idxs.clamp(min=0)]
            labels = torch.where(matched_idxs >= 0, labels, torch.full_like(labels, self.num_classes))
            gt_labels.append(labels)
            matched_gt_boxes.append(gt[matched_idxs.clamp(min=0)])
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_deltas: List[Tensor],
        gt_boxes: List[Tensor],
        pred_quality: Optional[List[Tensor]] = None,
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_logits: per level, (N, R_l, C) classification (or joint
                classification-IoU) logits.
            gt_labels: per image, (R,) from :meth:`label_anchors`.
            pred_deltas: per level, (N, R_l, 4 * (n+1)) distribution logits
                (or (N, R_l, 4) distances for "dirac").
            gt_boxes: per image, (R, 4) matched boxes.
            pred_quality: per level, (N, R_l, 1) logits of the separate quality
                branch, if there is one.

        Returns:
            dict with ``loss_qfl`` (or ``loss_cls`` for Focal Loss; normalised by
            the number of positives), ``loss_bbox`` (GIoU) and ``loss_dfl``
            (if DFL is on; both normalised by the sum of the positives'
            weights, see ``box_loss_weighting``), ``loss_quality`` (with a
            separate quality branch; normalised by the number of positives);
            weights applied, normalisers averaged over workers.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / num_images)
        pos_normalizer = reduce_mean(num_pos.float()).clamp(min=1.0)

        pred_logits = torch.cat(pred_logits, dim=1)  # (N, R, C)
        pred_deltas = torch.cat(pred_deltas, dim=1)  # (N, R, D)
        anchors = Boxes.cat(anchors).tensor  # (R, 4)

        pos_img, pos_anchor = pos_mask.nonzero(as_tuple=True)
        pos_deltas = pred_deltas[pos_img, pos_anchor]  # (P, D)
        pos_anchors = anchors[pos_anchor].float()  # (P, 4)
        pos_gt_boxes = torch.stack(gt_boxes)[pos_img, pos_anchor].float()  # (P, 4)

        # boxes in units of the level's stride, as in the reference
        centers, strides = self.box2box_transform.centers_and_strides(pos_anchors)
        pred_boxes = distance2box(centers / strides, self.box2box_transform.distances(pos_deltas))
        target_boxes = pos_gt_boxes / strides
        # IoU of the detached prediction: QFL's target, or the IoU branch's
        quality = aligned_iou(pred_boxes.detach(), target_boxes)

        losses = {}
        if self.cls_loss == "qfl":
            cls_targets = dense_class_targets(gt_labels, self.num_classes, quality)
            loss_cls = quality_focal_loss(pred_logits, cls_targets, self.qfl_beta)
            losses["loss_qfl"] = loss_cls.sum() * self.loss_qfl_weight / pos_normalizer
        else:
            cls_targets = dense_class_targets(gt_labels, self.num_classes)
            loss_cls = sigmoid_focal_loss(pred_logits, cls_targets, self.focal_loss_alpha, self.focal_loss_gamma)
            losses["loss_cls"] = loss_cls.sum() * self.loss_qfl_weight / pos_normalizer

        # FCOS's centerness of each positive's anchor centre in its box: ATSS's
        # box-loss weight and the centerness branch's target
        if "centerness" in (self.box_loss_weighting, self.quality):
            ctr_targets = centerness(box2distance(centers, pos_gt_boxes))  # (P,)
        if self.box_loss_weighting == "score":
            weights = pred_logits.detach()[pos_img, pos_anchor].float().sigmoid().max(dim=1).values  # (P,)
        elif self.box_loss_weighting == "centerness":
            weights = ctr_targets
        else:
            weights = torch.ones_like(quality)
        box_normalizer = reduce_mean(weights.sum()).clamp(min=1.0)
        loss_giou = giou_loss(pred_boxes, target_boxes, reduction="none")
        losses["loss_bbox"] = (loss_giou * weights).sum() * self.loss_bbox_weight / box_normalizer
        if self.box_representation == "distribution" and self.loss_dfl_weight > 0:
            dfl_targets = self.box2box_transform.get_deltas(pos_anchors, pos_gt_boxes)  # (P, 4)
            loss_dfl = distribution_focal_loss(pos_deltas.unflatten(-1, (4, -1)), dfl_targets).mean(dim=1)
            losses["loss_dfl"] = (loss_dfl * weights).sum() * self.loss_dfl_weight / box_normalizer

        if pred_quality is not None:
            if self.quality == "centerness":
                quality = ctr_targets
            pos_quality = torch.cat(pred_quality, dim=1)[pos_img, pos_anchor, 0].float()  # (P,)
            loss_quality = F.binary_cross_entropy_with_logits(pos_quality, quality, reduction="sum")
            losses["loss_quality"] = loss_quality * self.loss_quality_weight / pos_normalizer
        return losses

    # ----------------------------------------------------------------- inference
    def forward_inference(self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]):
        pred_logits, pred_deltas, *pred_quality = self._transpose_dense_predictions(
            predictions, self._prediction_channels
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores = [x[img_idx].sigmoid() for x in pred_logits]
            if pred_quality:
                # a separate quality is multiplied into the score, as in ATSS
                scores = [s * q[img_idx].sigmoid() for s, q in zip(scores, pred_quality[0])]
            deltas = [x[img_idx] for x in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: Tensor,
        pred_deltas: Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        DenseDetector's per-level filtering (score threshold, then the top-k
        (location, class) pairs), decoding the kept boxes from their edge
        distributions, which are kept as well.

        Args:
            anchors: Boxes (R_l, 4) of the level.
            pred_scores: (R_l, C) scores.
            pred_deltas: (R_l, 4(n+1)) distribution logits (or (R_l, 4)
                distances for "dirac").
        """
        keep = pred_scores > score_thresh
        pred_scores = pred_scores[keep]
        candidates = torch.nonzero(keep)  # (K, 2): location, class
        num = candidates.shape[0]
        num_topk = torch.clamp(num, max=topk_candidates) if isinstance(num, Tensor) else min(num, topk_candidates)
        pred_scores, order = pred_scores.topk(num_topk)
        anchor_idxs, classes_idxs = candidates[order].unbind(dim=1)

        centers, strides = self.box2box_transform.centers_and_strides(anchors.tensor[anchor_idxs].float())
        if self.box_representation == "distribution":
            probs = edge_distributions(pred_deltas[anchor_idxs])  # (K, 4, n+1)
            mean, std = distribution_mean_std(probs, self.box2box_transform.bin_width)
        else:
            mean = self.box2box_transform.distances(pred_deltas[anchor_idxs])
        result = Instances(
            image_size,
            pred_boxes=Boxes(distance2box(centers, mean * strides)),
            scores=pred_scores,
            pred_classes=classes_idxs,
        )
        if self.output_box_distributions:
            result.pred_box_dists = probs
            result.pred_box_std = std * strides
        return result

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_dists: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            box_cls: per level, (R_l, C) scores (sigmoid of the logits, times
                the separate quality if any).
            box_dists: per level, (R_l, 4(n+1)) distribution logits (or
                (R_l, 4) distances).
            image_size: (H, W) of the input before padding.

        Returns:
            Instances with ``pred_boxes``, ``scores``, ``pred_classes`` (and
            ``pred_box_dists``, ``pred_box_std`` in input-image pixels if
            ``output_box_distributions``).
        """
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_dists, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        # a diverged model or a corrupt input gives Inf/NaN boxes: they become empty boxes and are
        # dropped with the other empty ones, so that evaluation and serving go on
        boxes = pred.pred_boxes.tensor
        finite = torch.isfinite(boxes).all(dim=1)
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()) and not bool(finite.all()):
            log_every_n_seconds(
                logging.WARNING,
                f"GFL: dropped {int((~finite).sum())} detections with non-finite boxes "
                "(the head's outputs hold Inf/NaN)",
                n=30,
                name=__name__,
            )
        pred.pred_boxes = Boxes(torch.where(finite[:, None], boxes, torch.zeros_like(boxes)))
        pred.pred_boxes.clip(image_size)
        pred = pred[pred.pred_boxes.nonempty(threshold=0.0)]
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]
