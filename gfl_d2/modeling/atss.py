"""
Adaptive Training Sample Selection (ATSS, Zhang et al. 2020), the label
assignment GFL trains with.
"""

from typing import List

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

from .box_coding import aligned_iou

__all__ = ["ATSSMatcher", "atss_labels"]


def _nearest_anchors(anchors: List[Tensor], points: Tensor, topk: int) -> Tensor:
    """
    Args:
        anchors: per level, (R_l, 4) anchor boxes.
        points: (M, 2) points (the ground-truth boxes' centres).

    Returns:
        (K, M) long: for each point, the indices (into the levels' anchors
        concatenated) of the ``topk`` anchors whose centres are nearest (L2)
        on each level, levels in order (K = sum over levels of min(topk, R_l)).
    """
    candidates = []
    start = 0
    for level_anchors in anchors:
        level_anchors = level_anchors.float()
        cx = (level_anchors[:, 0] + level_anchors[:, 2]) * 0.5  # (R_l,)
        cy = (level_anchors[:, 1] + level_anchors[:, 3]) * 0.5
        # dx^2 + dy^2 without an (R_l, M, 2) intermediate; the same float32
        # operations, so the same values
        dist = (
            (cx[:, None] - points[None, :, 0]).square_()
            + (cy[:, None] - points[None, :, 1]).square_()
        ).sqrt_()
        k = min(topk, len(level_anchors))
        if k > 0:
            candidates.append(dist.topk(k, dim=0, largest=False).indices + start)  # (k, M)
        start += len(level_anchors)
    return torch.cat(candidates, dim=0)


class ATSSMatcher:
    """
    For every ground-truth box:

    1. on each level, the ``topk`` anchors whose centres are nearest (L2) to the
       box centre are candidates;
    2. the IoU threshold is mean + std (unbiased) of the candidates' IoUs;
    3. a candidate is positive if its IoU reaches the threshold and its centre
       lies strictly inside the box (every edge distance > ``center_eps``);
    4. an anchor positive for several boxes takes the one of highest IoU (the
       lowest box index on a tie).

    Vectorised over ground-truth boxes; the only loop is over FPN levels.
    """

    def __init__(self, topk: int = 9, center_eps: float = 0.01):
        if topk < 1:
            raise ValueError(f"ATSS topk must be >= 1, got {topk}")
        self.topk = int(topk)
        self.center_eps = float(center_eps)

    @torch.no_grad()
    def __call__(self, gt_boxes: Tensor, anchors: List[Tensor]) -> Tensor:
        """
        Args:
            gt_boxes: (M, 4) ground-truth boxes (x0, y0, x1, y1) of one image.
            anchors: per level, (R_l, 4) anchor boxes.

        Returns:
            (R,) long: index of the matched box for each of the R = sum R_l
            anchors (levels concatenated in order), -1 for background.
        """
        num_anchors = sum(len(a) for a in anchors)
        device = anchors[0].device
        matched = torch.full((num_anchors,), -1, dtype=torch.long, device=device)
        num_gt = len(gt_boxes)
        if num_gt == 0 or num_anchors == 0:
            return matched

        gt_boxes = gt_boxes.float()
        gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) * 0.5  # (M, 2)

        # 1. candidates: the k nearest anchor centres on every level
        candidates = _nearest_anchors(anchors, gt_centers, self.topk)  # (K, M)

        # 2. adaptive IoU threshold per box
        all_anchors = torch.cat(anchors, dim=0).float()
        cand_boxes = all_anchors[candidates]  # (K, M, 4)
        ious = aligned_iou(cand_boxes, gt_boxes[None])  # (K, M)
        threshold = ious.mean(dim=0) + ious.std(dim=0)  # (M,)

        # 3. IoU above threshold and centre strictly inside the box
        cand_centers = (cand_boxes[..., :2] + cand_boxes[..., 2:]) * 0.5
        edge_dist = torch.cat(
            [cand_centers - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - cand_centers], dim=-1
        )
        is_pos = (ious >= threshold[None]) & (edge_dist.min(dim=-1).values > self.center_eps)

        # 4. resolve anchors claimed by several boxes: highest IoU, then lowest index
        gt_idx = torch.arange(num_gt, device=device).expand_as(candidates)
        pos_anchor, pos_gt, pos_iou = candidates[is_pos], gt_idx[is_pos], ious[is_pos]
        best_iou = torch.full((num_anchors,), -1.0, device=device)
        best_iou.scatter_reduce_(0, pos_anchor, pos_iou, reduce="amax")
        is_best = pos_iou == best_iou[pos_anchor]
        fill = torch.full((num_anchors,), num_gt, dtype=torch.long, device=device)
        fill.scatter_reduce_(0, pos_anchor[is_best], pos_gt[is_best], reduce="amin")
        return torch.where(fill < num_gt, fill, matched)


@torch.no_grad()
def atss_labels(
    matcher: ATSSMatcher, anchors: List[Boxes], gt_instances: List[Instances], num_classes: int
):
    """
    Per image, the class of each anchor's matched box (``num_classes`` for
    background) and the matched box.

    Args:
        anchors: per level, Boxes of (R_l, 4) anchors.
        gt_instances: per image, Instances with ``gt_boxes`` and ``gt_classes``.

    Returns:
        gt_labels: per image, (R,) long.
        matched_gt_boxes: per image, (R, 4) (meaningless for background anchors).
    """
    anchor_tensors = [a.tensor for a in anchors]
    num_anchors = sum(len(a) for a in anchor_tensors)
    gt_labels, matched_gt_boxes = [], []
    for inst in gt_instances:
        gt = inst.gt_boxes.tensor
        if len(inst) == 0:
            gt_labels.append(
                torch.full((num_anchors,), num_classes, dtype=torch.long, device=gt.device)
            )
            matched_gt_boxes.append(gt.new_zeros((num_anchors, 4)))
            continue
        matched_idxs = matcher(gt, anchor_tensors)
        labels = inst.gt_classes[matched_idxs.clamp(min=0)]
        gt_labels.append(
            torch.where(matched_idxs >= 0, labels, torch.full_like(labels, num_classes))
        )
        matched_gt_boxes.append(gt[matched_idxs.clamp(min=0)])
    return gt_labels, matched_gt_boxes
