"""
NanoDet-Plus's training (RangiLyu/nanodet: ``NanoDetPlus`` and
``NanoDetPlusHead.loss``) as a :class:`~gfl_d2.modeling.GFL` meta-architecture.
Inference is GFL's. Training assigns labels with the dynamic soft-label
assigner from the detached predictions, and, with an auxiliary head, from
the auxiliary head's: a copy of the neck reads the bottom-up features, a
wider head reads ``cat(neck, aux neck)`` per level, and its assignment and
IoUs train both heads with the same losses (QFL, GIoU, DFL).
"""

import logging
from typing import Dict, List, NamedTuple, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from .box_coding import anchor_points, box2distance, centerness, distance2box
from .dsl_assigner import DynamicSoftLabelAssigner
from .head import GFLHead, build_box2box_transform
from .losses import LocalizationTargets, reduce_mean
from .meta_arch import GFL
from .nanodet_head import NanoDetPlusHead

__all__ = ["NanoDetPlus", "DenseAssignment"]

logger = logging.getLogger(__name__)

# the training-only parts: absent from inference checkpoints (NanoDet's released weights)
AUX_PARTS = ("aux_neck", "aux_head")


class DenseAssignment(NamedTuple):
    """The labels of a batch's points, from one head's predictions."""

    gt_labels: Tensor  # (N, R) class of each point's box; num_classes: background
    gt_boxes: Tensor  # (N, R, 4) its box, pixels (zeros for background)
    ious: Tensor  # (N, R) IoU of the assigning head's predicted box with it (QFL's target)


@META_ARCH_REGISTRY.register()
class NanoDetPlus(GFL):
    """
    GFL trained as NanoDet-Plus. Inference, the state dict of the inference
    parts and the losses' math are :class:`GFL`'s; labels come from
    :class:`DynamicSoftLabelAssigner` instead of ATSS (``anchor_matcher`` stays
    the prediction-free labelling that the bin check reads).

    Args:
        assigner: labels each image's points from detached predictions (top-k
            13, IoU factor 3).
        aux_head: the training-only auxiliary head (NanoDet's ``SimpleConvHead``:
            a :class:`GFLHead` with LeakyReLU, 4 convs, GroupNorm), reading twice
            the neck's channels; None: none, the model assigns from its own head.
            With it, the model holds ``aux_neck``, a copy of the backbone's layers
            after its bottom-up network (``backbone.copy_neck()``), and trains
            both heads from the aux head's assignment (losses ``aux_*`` too).
            Both exist only for training: inference never runs them, and a
            checkpoint without any of their tensors (NanoDet's released weights,
            converted) loads, leaving them as they are.
        aux_detach_iter: from this iteration on (detectron2's ``EventStorage``
            iteration, which every trainer keeps and each DDP worker holds alike),
            the aux neck and head read detached features: their losses train only
            themselves (NanoDet: ``detach_epoch``).
        kwargs: :class:`GFL`'s.
    """

    @configurable
    def __init__(
        self,
        *,
        assigner: DynamicSoftLabelAssigner,
        aux_head: Optional[nn.Module] = None,
        aux_detach_iter: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.assigner = assigner
        self.aux_detach_iter = int(aux_detach_iter)
        self.aux_head = aux_head
        self.aux_neck = None
        if aux_head is not None:
            _check_aux_head(self.head, aux_head)
            if not hasattr(self.backbone, "copy_neck"):
                raise ValueError(
                    f"an auxiliary head needs a backbone with copy_neck() and forward_neck() "
                    f"(GhostPAN), got {type(self.backbone).__name__}"
                )
            self.aux_neck = self.backbone.copy_neck()

    @classmethod
    def from_config(cls, cfg):
        g, n = cfg.MODEL.GFL, cfg.MODEL.NANODET_PLUS
        args = super().from_config(cfg)
        shapes = [args["backbone"].output_shape()[f] for f in g.IN_FEATURES]
        aux_head = None
        if n.AUX_HEAD:
            aux_head = GFLHead(
                input_shape=[ShapeSpec(channels=2 * s.channels) for s in shapes],
                num_classes=g.NUM_CLASSES, conv_dims=[n.AUX_FEAT_CHANNELS] * n.AUX_NUM_CONVS,
                norm=n.AUX_NORM, activation=n.AUX_ACTIVATION, prior_prob=g.PRIOR_PROB,
                box2box_transform=build_box2box_transform(cfg),
            )  # fmt: skip
        args.update(
            assigner=DynamicSoftLabelAssigner(n.DSL_TOPK, n.DSL_IOU_FACTOR),
            aux_head=aux_head,
            aux_detach_iter=n.AUX_DETACH_ITER,
        )
        return args

    @classmethod
    def head_from_config(cls, cfg, feature_shapes: List[ShapeSpec]) -> nn.Module:
        g, n = cfg.MODEL.GFL, cfg.MODEL.NANODET_PLUS
        return NanoDetPlusHead(
            input_shape=feature_shapes, num_classes=g.NUM_CLASSES,
            box2box_transform=build_box2box_transform(cfg), feat_channels=n.FEAT_CHANNELS,
            num_convs=n.NUM_CONVS, kernel_size=n.KERNEL_SIZE, norm=n.NORM,
            activation=n.ACTIVATION, prior_prob=g.PRIOR_PROB,
        )  # fmt: skip

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if not self.training or self.aux_head is None:
            return super().forward(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        bottom_up = self.backbone.bottom_up(images.tensor)
        features = self.backbone.forward_neck(bottom_up)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)
        aux_predictions = self.aux_head(self.aux_features(bottom_up, features))
        return self.forward_training(
            images, features, predictions, gt_instances, aux_predictions=aux_predictions
        )

    def aux_reads_detached(self) -> bool:
        """Whether the current training iteration is at or past ``aux_detach_iter``."""
        return get_event_storage().iter >= self.aux_detach_iter

    def aux_features(self, bottom_up: Dict[str, Tensor], features: List[Tensor]) -> List[Tensor]:
        """
        Args:
            bottom_up: the bottom-up network's outputs (what the necks read).
            features: per level, (N, C, Hi, Wi) the neck's outputs that the head reads.

        Returns:
            per level, (N, 2C, Hi, Wi): the neck's and the aux neck's features;
            detached inputs from ``aux_detach_iter`` on, as NanoDet's ``forward_train``.
        """
        if self.aux_reads_detached():
            bottom_up = {k: v.detach() for k, v in bottom_up.items()}
            features = [f.detach() for f in features]
        aux = self.aux_neck.forward_neck(bottom_up)
        return [torch.cat([f, aux[k]], dim=1) for f, k in zip(features, self.head_in_features)]

    def forward_training(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]],
        gt_instances: List[Instances], distillation: Optional[LocalizationTargets] = None, *,
        aux_predictions: Optional[List[List[Tensor]]] = None,
    ) -> Dict[str, Tensor]:  # fmt: skip
        """
        The losses of the head (``loss_qfl``, ``loss_bbox``, ``loss_dfl``; ``loss_ld``
        with a teacher's ``distillation``) and, given the aux head's
        ``aux_predictions`` (per level [cls_logits, box_regs]), the same of the aux
        head as ``aux_*``; labels from the aux head's predictions when it is there.
        """
        if self.aux_head is not None and aux_predictions is None:
            # a caller that ran the head alone (LD's wrapper) would leave the aux parts untrained
            raise ValueError(
                "NanoDetPlus with an auxiliary head trains through its own forward(); "
                "to train from the head alone, build it with aux_head=None"
            )
        anchors = self.anchor_generator(features)
        logits, box_regs = self._transpose_dense_predictions(predictions, self.head.output_channels)
        assigning = (logits, box_regs)
        if aux_predictions is not None:
            aux_logits, aux_box_regs = self._transpose_dense_predictions(
                aux_predictions, self.aux_head.output_channels
            )
            assigning = (aux_logits, aux_box_regs)
        assignment = self.assign(anchors, *assigning, gt_instances)
        pos_mask = assignment.gt_labels != self.num_classes
        get_event_storage().put_scalar("num_pos_anchors", pos_mask.sum().item() / len(pos_mask))
        losses = self.head_losses(anchors, logits, box_regs, assignment, distillation)
        if aux_predictions is not None:
            aux = self.head_losses(anchors, aux_logits, aux_box_regs, assignment)
            losses.update({f"aux_{k}": v for k, v in aux.items()})
        return losses

    @torch.no_grad()
    def assign(
        self, anchors: List[Boxes], pred_logits: List[Tensor], pred_box_regs: List[Tensor],
        gt_instances: List[Instances],
    ) -> DenseAssignment:  # fmt: skip
        """
        Args:
            anchors: per level, Boxes (R_l, 4): their centres are the points.
            pred_logits, pred_box_regs: per level, (N, R_l, C) and (N, R_l, D)
                the assigning head's outputs (detached here).
            gt_instances: per image, ``gt_boxes`` and ``gt_classes``.
        """
        points, strides = anchor_points(Boxes.cat(anchors).tensor, self.level_strides(anchors))
        logits = torch.cat(pred_logits, dim=1).float()  # (N, R, C)
        distances = self.box2box_transform.decode(torch.cat(pred_box_regs, dim=1)).distances
        pred_boxes = distance2box(points, distances * strides)  # (N, R, 4) pixels, unclipped
        labels, boxes, ious = [], [], []
        for img, inst in enumerate(gt_instances):
            gt_boxes = inst.gt_boxes.tensor.to(pred_boxes)
            matched, iou = self.assigner(
                logits[img], points, pred_boxes[img], gt_boxes, inst.gt_classes
            )
            # background points index one extra entry: class num_classes, an all-zero box
            index = torch.where(matched >= 0, matched, len(inst))
            extra_class = inst.gt_classes.new_full((1,), self.num_classes)
            labels.append(torch.cat([inst.gt_classes, extra_class])[index])
            boxes.append(torch.cat([gt_boxes, gt_boxes.new_zeros((1, 4))])[index])
            ious.append(iou)
        return DenseAssignment(torch.stack(labels), torch.stack(boxes), torch.stack(ious))

    def head_losses(
        self, anchors: List[Boxes], pred_logits: List[Tensor], pred_box_regs: List[Tensor],
        assignment: DenseAssignment, distillation: Optional[LocalizationTargets] = None,
    ) -> Dict[str, Tensor]:  # fmt: skip
        """
        One head's QFL (targets: the assignment's IoUs; normalised by the
        positives, averaged over workers, at least 1), and :meth:`GFL.box_losses`
        (GIoU, DFL: weighted by the head's own detached max score).

        Args:
            anchors: per level, Boxes (R_l, 4).
            pred_logits, pred_box_regs: per level, (N, R_l, C) and (N, R_l, D).
            assignment: from :meth:`assign`.
        """
        pos_mask = assignment.gt_labels != self.num_classes  # (N, R)
        pos_normalizer = reduce_mean(pos_mask.sum().float()).clamp(min=1.0)
        pos = self.decode_positives(
            pos_mask, anchors, pred_box_regs, list(assignment.gt_boxes.unbind(0))
        )
        # QFL's targets: the IoUs of the assigning head (the aux head's, with it)
        pos = pos._replace(ious=assignment.ious[pos_mask])
        pred_logits = torch.cat(pred_logits, dim=1)  # (N, R, C)
        loss_cls = self.cls_loss(pred_logits, assignment.gt_labels, pos.ious)
        losses = {self.cls_loss.name: loss_cls * self.loss_cls_weight / pos_normalizer}
        ctr_targets = centerness(box2distance(pos.centers, pos.gt_boxes))
        losses.update(self.box_losses(pos, pred_logits, None, ctr_targets, distillation))
        return losses

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # an inference checkpoint (none of the aux parts' tensors) loads whole: the
        # training-only parts keep their values; a checkpoint with some of them loads as usual.
        # A model built without them (aux_head=None) leaves out a checkpoint's aux parts
        # (converted NanoDet weights hold them, for fine-tuning).
        if self.aux_head is None:
            aux = [k for k in state_dict if k.startswith(tuple(f"{prefix}{p}." for p in AUX_PARTS))]
            for key in aux:
                del state_dict[key]
            if aux:
                logger.info(
                    f"Left out the checkpoint's auxiliary neck and head ({len(aux)} tensors, "
                    "training-only): this model was built without them"
                )
        else:
            own = {}
            for part in AUX_PARTS:
                own.update(getattr(self, part).state_dict(prefix=f"{prefix}{part}."))
            if not any(k in state_dict for k in own):
                state_dict.update(own)
                logger.info(
                    "The checkpoint holds no auxiliary neck or head (training-only): "
                    "they keep their current weights"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _check_aux_head(head: nn.Module, aux_head: nn.Module) -> None:
    """The aux head's outputs must read as the head's: the same classes and box outputs."""
    if aux_head.output_channels != head.output_channels or (
        aux_head.box2box_transform != head.box2box_transform
    ):
        raise ValueError(
            f"the auxiliary head's outputs {aux_head.output_channels} "
            f"({aux_head.box2box_transform}) differ from the head's "
            f"{head.output_channels} ({head.box2box_transform})"
        )
