"""
NanoDet-Plus's dynamic soft-label assignment (after OTA/YOLOX's SimOTA): the
candidates of a ground-truth box are the points strictly inside it; each
(point, box) pair costs a soft-label classification term (BCE towards the
IoU of the point's predicted box, weighted by the squared gap between that
IoU and the predicted probability) plus ``iou_factor`` times -log IoU; each
box takes its k cheapest points, k the integer part of the sum of its top-k
IoUs (at least 1); a point claimed by several boxes goes to the cheapest.
"""

from typing import Tuple

import torch
from detectron2.structures import Boxes, pairwise_iou
from torch import Tensor
from torch.nn import functional as F

__all__ = ["DynamicSoftLabelAssigner"]


class DynamicSoftLabelAssigner:
    """
    Args:
        topk: how many of a box's best IoUs are summed into its k (13).
        iou_factor: weight of the -log IoU cost (3.0).
    """

    def __init__(self, topk: int = 13, iou_factor: float = 3.0):
        self.topk, self.iou_factor = topk, iou_factor

    def _costs(self, logits: Tensor, ious: Tensor, gt_labels: Tensor) -> Tensor:
        """(V, C) logits, (V, G) IoUs, (G,) labels -> (V, G) costs."""
        soft = F.one_hot(gt_labels.long(), logits.shape[1]).to(ious)[None] * ious[..., None]
        logits = logits[:, None].expand(-1, len(gt_labels), -1)  # (V, G, C)
        gap = (soft - logits.sigmoid()).abs().pow(2.0)
        cls_cost = F.binary_cross_entropy_with_logits(logits, soft, reduction="none") * gap
        return cls_cost.sum(-1) - torch.log(ious + 1e-7) * self.iou_factor

    def _match(self, cost: Tensor, ious: Tensor) -> Tensor:
        """(V, G) costs and IoUs -> (V, G) 0/1 matching, one box at most per point."""
        k = torch.topk(ious, min(self.topk, ious.shape[0]), dim=0).values.sum(0).int().clamp(min=1)
        ranks = cost.argsort(dim=0).argsort(dim=0)  # rank of each point's cost within its box
        matching = (ranks < k[None]).to(cost)
        several = matching.sum(1) > 1
        if several.any():
            cheapest = F.one_hot(cost[several].argmin(1), cost.shape[1]).to(cost)
            matching[several] = cheapest
        return matching

    @torch.no_grad()
    def __call__(
        self, logits: Tensor, points: Tensor, pred_boxes: Tensor, gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> Tuple[Tensor, Tensor]:  # fmt: skip
        """
        Args:
            logits: (R, C) class logits of the R points; points: (R, 2) (x, y);
            pred_boxes: (R, 4) decoded predicted boxes; gt_boxes: (G, 4); gt_labels: (G,).

        Returns:
            (R,) the matched ground-truth index, -1 for background, and (R,) the
            IoU of the point's predicted box with it (0 for background).
        """
        matched = torch.full((len(points),), -1, dtype=torch.long, device=points.device)
        matched_iou = points.new_zeros(len(points))
        if len(gt_boxes) == 0 or len(points) == 0:
            return matched, matched_iou
        deltas = torch.cat(
            [points[:, None] - gt_boxes[:, :2], gt_boxes[:, 2:] - points[:, None]], -1
        )
        valid = (deltas.min(-1).values > 0).any(1)  # inside some box
        if not valid.any():
            return matched, matched_iou
        ious = pairwise_iou(Boxes(pred_boxes[valid]), Boxes(gt_boxes))  # (V, G)
        matching = self._match(self._costs(logits[valid], ious, gt_labels), ious)
        fg = matching.sum(1) > 0
        index = valid.nonzero()[:, 0][fg]
        matched[index] = matching[fg].argmax(1)
        matched_iou[index] = (matching * ious).sum(1)[fg]
        return matched, matched_iou
