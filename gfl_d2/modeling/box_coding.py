"""
GFL's "general distribution" box representation.

Each of the four edge distances (left, top, right, bottom) of a box, measured
from an anchor centre in units of the level's stride, is a discrete
distribution over ``n + 1`` bins at values ``0, Δ, ..., nΔ`` (``n = reg_max``);
the distance is its expectation (the paper's "integral").
"""

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "edge_distributions",
    "distribution_mean_std",
    "integral",
    "distance2box",
    "box2distance",
    "aligned_iou",
    "EdgeDecoding",
    "DistributionBox2BoxTransform",
    "DiracBox2BoxTransform",
    "centerness",
    "anchor_points",
]


def edge_distributions(dist_logits: Tensor) -> Tensor:
    """
    Args:
        dist_logits: (..., 4 * (n+1)) logits; the four edges (l, t, r, b) in
            that order, the n+1 bins of one edge contiguous.

    Returns:
        (..., 4, n+1) float32 probabilities of each edge over its bins.
    """
    if dist_logits.shape[-1] % 4 != 0:
        raise ValueError(f"expected 4 * (n+1) channels, got {dist_logits.shape[-1]}")
    # explicit sizes (no -1): an ONNX Reshape cannot infer -1 when no box is left
    return F.softmax(dist_logits.float().unflatten(-1, (4, dist_logits.shape[-1] // 4)), dim=-1)


def _sum_last(x: Tensor) -> Tensor:
    """
    Sum over the last dim. Traced (ONNX/TorchScript export), as the last
    element of a cumulative sum: onnxruntime up to 1.31 returns the input's
    shape from ReduceSum on an empty input (a pyramid level with no candidate),
    and the export then fails at run time; CumSum keeps the shape right.
    """
    return x.cumsum(dim=-1)[..., -1] if torch.jit.is_tracing() else x.sum(dim=-1)


def distribution_mean_std(probs: Tensor, bin_width: float = 1.0) -> Tuple[Tensor, Tensor]:
    """
    Args:
        probs: (..., n+1) probabilities over the bins ``0, Δ, ..., nΔ``.
        bin_width: Δ.

    Returns:
        (...) expectation and (...) standard deviation, in units of Δ's unit.
    """
    bins = torch.arange(probs.shape[-1], device=probs.device, dtype=probs.dtype) * bin_width
    # element-wise products, not matmuls, so that autocast keeps them in fp32
    mean = _sum_last(probs * bins)
    var = _sum_last(probs * (bins - mean.unsqueeze(-1)) ** 2)
    return mean, var.clamp(min=0).sqrt()


def integral(dist_logits: Tensor, bin_width: float = 1.0) -> Tensor:
    """
    Expected value of each edge distribution (the paper's integral).

    Args:
        dist_logits: (..., 4 * (n+1)) logits; the four edges (l, t, r, b) in
            that order, the n+1 bins of one edge contiguous.
        bin_width: Δ, the distance between neighbouring bins.

    Returns:
        (..., 4) expected distances (in the same units as ``bin_width``).
    """
    return distribution_mean_std(edge_distributions(dist_logits), bin_width)[0]


def distance2box(centers: Tensor, distances: Tensor) -> Tensor:
    """
    Args:
        centers: (..., 2) points (x, y).
        distances: (..., 4) distances (l, t, r, b) from the points to the edges.

    Returns:
        (..., 4) boxes (x0, y0, x1, y1).
    """
    return torch.cat([centers - distances[..., :2], centers + distances[..., 2:]], dim=-1)


def box2distance(centers: Tensor, boxes: Tensor) -> Tensor:
    """
    Inverse of :func:`distance2box`: (..., 2) points and (..., 4) boxes ->
    (..., 4) distances (l, t, r, b), unclamped (negative outside the box).
    """
    return torch.cat([centers - boxes[..., :2], boxes[..., 2:] - centers], dim=-1)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of (..., 4) boxes with (..., 4) boxes, element by element -> (...)."""
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    return inter / (area1 + area2 - inter).clamp(min=eps)


def centerness(distances: Tensor) -> Tensor:
    """
    FCOS's centerness of points inside their boxes.

    Args:
        distances: (..., 4) positive distances (l, t, r, b) to the box edges.

    Returns:
        (...) ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.
    """
    left_right, top_bottom = distances[..., 0::2], distances[..., 1::2]
    ratio = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * (
        top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values
    )
    return ratio.sqrt()


class EdgeDecoding(NamedTuple):
    """What a box transform reads off the head's box outputs."""

    distances: Tensor  # (..., 4) float32 edge distances (l, t, r, b), in strides
    probs: Optional[Tensor] = None  # (..., 4, n+1) each edge's distribution over its bins
    std: Optional[Tensor] = None  # (..., 4) each edge's standard deviation, in strides


def anchor_points(anchors: Tensor, strides: Tensor) -> Tuple[Tensor, Tensor]:
    """
    Args:
        anchors: (R, 4) anchor boxes.
        strides: (R,) or (R, 1) the stride of each anchor's level (the anchor
            generator's, not inferred from the anchor's size).

    Returns:
        (R, 2) anchor centres and (R, 1) strides, float32.
    """
    centers = (anchors[:, :2] + anchors[:, 2:]) * 0.5
    return centers, strides.reshape(-1, 1).to(centers.dtype)


class DiracBox2BoxTransform:
    """
    The Dirac-delta box representation (plain distance regression, as in
    FCOS/ATSS): each edge distance, in strides, is one number. The output is an
    offset from ``anchor_scale / 2`` strides (the half side of an anchor of
    ``anchor_scale x stride``), so that an untrained model predicts its anchor
    box, as ATSS's anchor-based regression does; ``relu`` keeps boxes valid (as
    detectron2's ``Box2BoxTransformLinear`` does). Starting from empty boxes
    instead would give QFL all-zero IoU targets and the joint score could
    collapse before the boxes learn.
    """

    has_distributions = False

    def __init__(self, anchor_scale: float = 8.0):
        if anchor_scale <= 0:
            raise ValueError(f"anchor_scale must be > 0, got {anchor_scale}")
        self.anchor_scale = float(anchor_scale)
        self.num_outputs = 4

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.anchor_scale == self.anchor_scale

    def __repr__(self) -> str:
        return f"DiracBox2BoxTransform(anchor_scale={self.anchor_scale})"

    def decode(self, box_regs: Tensor) -> EdgeDecoding:
        """(..., 4) box outputs -> their (..., 4) float32 distances in strides."""
        return EdgeDecoding(F.relu(box_regs.float() + self.anchor_scale / 2))

    def encode(self, centers: Tensor, strides: Tensor, boxes: Tensor) -> Tensor:
        """
        (R, 2) anchor centres, (R, 1) strides, (R, 4) boxes -> (R, 4) outputs decoding to the boxes.
        """
        return box2distance(centers, boxes) / strides - self.anchor_scale / 2


class DistributionBox2BoxTransform:
    """
    GFL's general distribution: the box outputs are ``4 * (n+1)`` logits, one
    distribution over the bins ``0, Δ, ..., nΔ`` (in strides) per edge (l, t,
    r, b; the bins of an edge contiguous); an edge's distance is the
    distribution's expectation (the integral).

    Args:
        reg_max: n, the largest bin (n + 1 bins per edge).
        bin_width: Δ, the spacing of the bins in units of stride.
    """

    has_distributions = True

    def __init__(self, reg_max: int = 16, bin_width: float = 1.0):
        if reg_max < 1:
            raise ValueError(f"reg_max must be >= 1, got {reg_max}")
        if bin_width <= 0:
            raise ValueError(f"bin_width must be > 0, got {bin_width}")
        self.reg_max = int(reg_max)
        self.bin_width = float(bin_width)
        self.num_outputs = 4 * (self.reg_max + 1)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and (other.reg_max, other.bin_width) == (
            self.reg_max,
            self.bin_width,
        )

    def __repr__(self) -> str:
        return f"DistributionBox2BoxTransform(reg_max={self.reg_max}, bin_width={self.bin_width})"

    def decode(self, box_regs: Tensor) -> EdgeDecoding:
        """(..., 4(n+1)) logits -> expected distances, the distributions and their std (strides)."""
        probs = edge_distributions(box_regs)
        mean, std = distribution_mean_std(probs, self.bin_width)
        return EdgeDecoding(mean, probs, std)

    def encode(self, centers: Tensor, strides: Tensor, boxes: Tensor) -> Tensor:
        """
        Args:
            centers: (R, 2) anchor centres.
            strides: (R, 1) their levels' strides.
            boxes: (R, 4) matched ground-truth boxes.

        Returns:
            (R, 4) DFL targets: distances in bins, clamped to [0, reg_max - 0.1]
            so that the right neighbour bin always exists.
        """
        dist = box2distance(centers, boxes) / (strides * self.bin_width)
        return dist.clamp(min=0.0, max=self.reg_max - 0.1)
