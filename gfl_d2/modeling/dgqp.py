"""
GFL V2's distribution-guided quality predictor (DGQP, Li et al. 2021): the
shape of each edge distribution (its top-k probabilities and their mean)
predicts the localisation quality of the box, which multiplies the
classification score.
"""
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["distribution_statistics", "DistributionGuidedQualityPredictor"]


def distribution_statistics(probs: Tensor, topk: int = 4, add_mean: bool = True, dim: int = -1) -> Tensor:
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
        raise ValueError(f"topk={topk} is larger than the {probs.shape[dim]} bins of each distribution")
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
    """

    def __init__(self, topk: int = 4, channels: int = 64, add_mean: bool = True):
        """
        Args:
            topk: k, probabilities kept per edge (GFL V2: 4).
            channels: hidden width (GFL V2's ``reg_channels``, 64).
            add_mean: append the mean of the top-k to each edge's statistics.
        """
        super().__init__()
        if topk < 1 or channels < 1:
            raise ValueError(f"DistributionGuidedQualityPredictor needs topk >= 1 and channels >= 1, got {topk}, {channels}")
        self.topk, self.add_mean = int(topk), bool(add_mean)
        self.in_channels = 4 * (self.topk + int(self.add_mean))
        self.layers = nn.Sequential(
            nn.Conv2d(self.in_channels, channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, kernel_size=1),
        )
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)

    def forward(self, box_regs: Tensor) -> Tensor:
        """
        Args:
            box_regs: (N, 4(n+1), H, W) the edge-distribution logits of a level.

        Returns:
            (N, 1, H, W) quality logits (the quality is their sigmoid).
        """
        n, c, h, w = box_regs.shape
        if c % 4:
            raise ValueError(f"the box outputs have {c} channels, not 4 * (n + 1) distribution logits")
        # fp32: softmax of half-precision logits loses the small probabilities
        probs = F.softmax(box_regs.float().reshape(n, 4, c // 4, h, w), dim=2)
        stats = distribution_statistics(probs, self.topk, self.add_mean, dim=2)
        return self.layers(stats.reshape(n, self.in_channels, h, w).to(box_regs.dtype))
