"""The GFL meta-architecture: a detectron2 ``DenseDetector``."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from fvcore.nn import giou_loss
from torch import Tensor, nn

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
    DistributionBox2BoxTransform,
    aligned_iou,
    distance2box,
    distribution_mean_std,
    edge_distributions,
    integral,
)
from .head import GFLHead
from .input_checks import sanitize_gt_instances
from .losses import distribution_focal_loss, quality_focal_loss

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
        loss_qfl_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_dfl_weight: float = 0.25,
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
            loss_*_weight: weights of the three losses (1, 2.0, 0.25 in the paper).
            test_*: inference filtering: score threshold, top-k (location, class)
                pairs per level, NMS IoU; max_detections_per_image after NMS.
            output_box_distributions: add ``pred_box_dists`` (N, 4, n+1), each
                edge's distribution over its bins, and ``pred_box_std`` (N, 4),
                each edge's standard deviation in output-image pixels, to the
                inference results. Turn off for deployment.
            size_divisibility: pad images to a multiple of this. ``None`` uses the
                backbone's (128 for an FPN with P7); the released GFL models
                used 32.
            pixel_mean, pixel_std: normalisation, in the channel order of
                ``input_format``.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.num_classes = num_classes
        self.reg_max = int(reg_max)
        if getattr(head, "reg_max", self.reg_max) != self.reg_max:
            raise ValueError(f"head.reg_max={head.reg_max} but GFL reg_max={self.reg_max}")

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
        self.box2box_transform = DistributionBox2BoxTransform(reg_max, bin_width, anchor_scale)

        self.qfl_beta = qfl_beta
        self.loss_qfl_weight = loss_qfl_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.loss_dfl_weight = loss_dfl_weight

        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.output_box_distributions = output_box_distributions
        self.size_divisibility = size_divisibility
        self.input_format = input_format

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
            "loss_qfl_weight": g.LOSS_QFL_WEIGHT,
            "loss_bbox_weight": g.LOSS_BBOX_WEIGHT,
            "loss_dfl_weight": g.LOSS_DFL_WEIGHT,
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
        pred_logits, pred_dists = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4 * (self.reg_max + 1)]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_dists, gt_boxes)

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
        pred_dists: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_logits: per level, (N, R_l, C) classification-IoU logits.
            gt_labels: per image, (R,) from :meth:`label_anchors`.
            pred_dists: per level, (N, R_l, 4 * (n+1)) distribution logits.
            gt_boxes: per image, (R, 4) matched boxes.

        Returns:
            dict with ``loss_qfl`` (normalised by the number of positives),
            ``loss_bbox`` (GIoU) and ``loss_dfl`` (normalised by the sum of the
            positives' predicted max score), weights applied, normalisers
            averaged over workers.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        num_pos = pos_mask.sum()
        get_event_storage().put_scalar("num_pos_anchors", num_pos.item() / num_images)
        qfl_normalizer = reduce_mean(num_pos.float()).clamp(min=1.0)

        pred_logits = torch.cat(pred_logits, dim=1)  # (N, R, C)
        pred_dists = torch.cat(pred_dists, dim=1)  # (N, R, 4(n+1))
        anchors = Boxes.cat(anchors).tensor  # (R, 4)

        pos_img, pos_anchor = pos_mask.nonzero(as_tuple=True)
        pos_dist_logits = pred_dists[pos_img, pos_anchor]  # (P, 4(n+1))
        pos_anchors = anchors[pos_anchor]  # (P, 4)
        pos_gt_boxes = torch.stack(gt_boxes)[pos_img, pos_anchor].float()  # (P, 4)

        # boxes in units of the level's stride, as in the reference
        centers, strides = self.box2box_transform.centers_and_strides(pos_anchors.float())
        pred_boxes = distance2box(centers / strides, integral(pos_dist_logits, self.box2box_transform.bin_width))
        target_boxes = pos_gt_boxes / strides

        # QFL: IoU of the detached prediction at the GT class, 0 elsewhere
        quality = aligned_iou(pred_boxes.detach(), target_boxes)
        cls_targets = torch.zeros_like(pred_logits, dtype=torch.float32)
        cls_targets[pos_img, pos_anchor, gt_labels[pos_img, pos_anchor]] = quality
        loss_qfl = quality_focal_loss(pred_logits, cls_targets, self.qfl_beta).sum() / qfl_normalizer

        # box losses weighted by the detached max predicted score of each positive
        weights = pred_logits.detach()[pos_img, pos_anchor].float().sigmoid().max(dim=1).values  # (P,)
        box_normalizer = reduce_mean(weights.sum()).clamp(min=1.0)
        loss_giou = giou_loss(pred_boxes, target_boxes, reduction="none")
        dfl_targets = self.box2box_transform.get_deltas(pos_anchors.float(), pos_gt_boxes)  # (P, 4)
        loss_dfl = distribution_focal_loss(pos_dist_logits.unflatten(-1, (4, -1)), dfl_targets).mean(dim=1)

        return {
            "loss_qfl": loss_qfl * self.loss_qfl_weight,
            "loss_bbox": (loss_giou * weights).sum() * self.loss_bbox_weight / box_normalizer,
            "loss_dfl": (loss_dfl * weights).sum() * self.loss_dfl_weight / box_normalizer,
        }

    # ----------------------------------------------------------------- inference
    def forward_inference(self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]):
        pred_logits, pred_dists = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4 * (self.reg_max + 1)]
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for img_idx, image_size in enumerate(images.image_sizes):
            scores = [x[img_idx].sigmoid() for x in pred_logits]
            dists = [x[img_idx] for x in pred_dists]
            results.append(self.inference_single_image(anchors, scores, dists, image_size))
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
            pred_deltas: (R_l, 4(n+1)) distribution logits.
        """
        keep = pred_scores > score_thresh
        pred_scores = pred_scores[keep]
        candidates = torch.nonzero(keep)  # (K, 2): location, class
        num = candidates.shape[0]
        num_topk = torch.clamp(num, max=topk_candidates) if isinstance(num, Tensor) else min(num, topk_candidates)
        pred_scores, order = pred_scores.topk(num_topk)
        anchor_idxs, classes_idxs = candidates[order].unbind(dim=1)

        probs = edge_distributions(pred_deltas[anchor_idxs])  # (K, 4, n+1)
        mean, std = distribution_mean_std(probs, self.box2box_transform.bin_width)
        centers, strides = self.box2box_transform.centers_and_strides(anchors.tensor[anchor_idxs].float())
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
            box_cls: per level, (R_l, C) scores (sigmoid of the logits).
            box_dists: per level, (R_l, 4(n+1)) distribution logits.
            image_size: (H, W) of the input before padding.

        Returns:
            Instances with ``pred_boxes``, ``scores``, ``pred_classes`` (and
            ``pred_box_dists``, ``pred_box_std`` in input-image pixels if
            ``output_box_distributions``).
        """
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_dists, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        pred.pred_boxes.clip(image_size)
        pred = pred[pred.pred_boxes.nonempty(threshold=0.0)]
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]
