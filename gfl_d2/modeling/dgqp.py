"""
GFL V2's distribution-guided quality predictor (DGQP, Li et al. 2021): the
shape of each edge distribution (its top-k probabilities and their mean)
predicts the localisation quality of the box, which multiplies the
classification score.
"""

from typing import List

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["distribution_statistics", "DistributionGuidedQualityPredictor"]


def distribution_statistics(
    probs: Tensor, topk: int = 4, add_mean: bool = True, dim: int = -1
) -> Tensor:
    """
    Each distribution's ``topk`` largest probabilities, descending, and (with
    ``add_mean``) their mean: a sharp distribution has one large value, a flat
    one several small ones.

    Args:
        probs: distributions along ``dim`` (``n + 1`` bins), e.g. (K, 4, n+1)
            or (N, 4, n+1, H, W) with ``dim=2``.

    Returns:
        the same shape with ``topk (+ 1)`` values along ``dim``.
    """
    if topk > probs.shape[dim]:
        raise ValueError(
            f"topk={topk} is larger than the {probs.shape[dim]} bins of each distribution"
        )
    top = probs.topk(topk, dim=dim).values
    if add_mean:
        top = torch.cat([top, top.mean(dim=dim, keepdim=True)], dim=dim)
    return top


class DistributionGuidedQualityPredictor(nn.Module):
    """
    Softmax of each of the four edge distributions, their statistics
    (:func:`distribution_statistics`, 4 x (k + 1) = 20 values per location by
    default, in the order (left, top, right, bottom) x (top-k, mean)), then a
    1x1 conv to ``channels``, ReLU, and a 1x1 conv to one quality logit per
    location. The statistics are not detached: the classification loss on the
    fused score also trains the box distributions through them.

    All levels go through at once, channels last: one softmax, one top-k over
    the last (contiguous) dim and the 1x1 convs as two matrix products, rather
    than some ten small operations per level (the difference is measurable on
    a GPU at batch 1).
    """

    def __init__(
        self, topk: int = 4, channels: int = 64, add_mean: bool = True, init_std: float = 0.01
    ):
        """
        Args:
            topk: k, probabilities kept per edge (GFL V2: 4).
            channels: hidden width (GFL V2's ``reg_channels``, 64).
            add_mean: append the mean of the top-k to each edge's statistics.
            init_std: std of the convs' normal initialisation (GFL V2: 0.01; biases 0).
                Both convs start this small, so each one's gradient is scaled by
                the other's weights: the output varies only once both have grown.
        """
        super().__init__()
        if topk < 1 or channels < 1:
            raise ValueError(
                "DistributionGuidedQualityPredictor needs topk >= 1 and channels >= 1, "
                f"got {topk}, {channels}"
            )
        self.topk, self.add_mean = int(topk), bool(add_mean)
        self.in_channels = 4 * (self.topk + int(self.add_mean))
        # 1x1 convs (the released models' layout), applied as linear maps on
        # channels-last statistics
        self.layers = nn.Sequential(
            nn.Conv2d(self.in_channels, channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, kernel_size=1),
        )
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=init_std)
                nn.init.constant_(module.bias, 0.0)

    def statistics(self, box_regs: List[Tensor]) -> Tensor:
        """
        Per level (N, 4(n+1), Hi, Wi) distribution logits -> (N, sum Hi*Wi,
        4 (k + 1)) float32 statistics.
        """
        n, c = box_regs[0].shape[:2]
        if c % 4:
            raise ValueError(
                f"the box outputs have {c} channels, not 4 * (n + 1) distribution logits"
            )
        flat = torch.cat(
            [x.permute(0, 2, 3, 1).reshape(n, -1, c) for x in box_regs], dim=1
        )  # (N, R, 4(n+1))
        # fp32: softmax of half-precision logits loses the small probabilities
        probs = F.softmax(flat.float().unflatten(-1, (4, c // 4)), dim=-1)  # (N, R, 4, n+1)
        return distribution_statistics(probs, self.topk, self.add_mean).flatten(2)

    def forward(self, box_regs: List[Tensor]) -> List[Tensor]:
        """
        Args:
            box_regs: per level, (N, 4(n+1), Hi, Wi) the edge-distribution logits.

        Returns:
            per level, (N, 1, Hi, Wi) quality logits (the quality is their sigmoid).
        """
        first, _, second = self.layers
        stats = self.statistics(box_regs).to(box_regs[0].dtype)
        hidden = F.relu(F.linear(stats, first.weight.flatten(1), first.bias))
        quality = F.linear(hidden, second.weight.flatten(1), second.bias)  # (N, R, 1)
        sizes = [x.shape[2] * x.shape[3] for x in box_regs]
        return [
            q.reshape(x.shape[0], x.shape[2], x.shape[3], 1).permute(0, 3, 1, 2)
            for q, x in zip(quality.split(sizes, dim=1), box_regs)
        ]
