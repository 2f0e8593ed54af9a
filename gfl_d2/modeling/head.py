"""The GFL head: shared classification and regression towers over FPN levels."""

import math
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from torch import Tensor, nn

from .box_coding import DiracBox2BoxTransform, DistributionBox2BoxTransform
from .dgqp import DistributionGuidedQualityPredictor
from .variants import BOX_REPRESENTATIONS, QUALITIES, SEPARATE_QUALITIES

__all__ = ["GFLHead", "Scale"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level on the regression output)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(in_channels: int, conv_dims: List[int], norm: str) -> nn.Sequential:
    layers = []
    for in_ch, out_ch in zip([in_channels] + list(conv_dims), conv_dims):
        # a conv followed by a norm layer needs no bias (as in the released models)
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=not norm))
        if norm:
            layers.append(get_norm(norm, out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _shared_in_channels(input_shape: List[ShapeSpec], norm) -> int:
    """The one channel count of all FPN levels, which towers shared across levels need."""
    channels = {s.channels for s in input_shape}
    if len(channels) != 1:
        raise ValueError(f"GFLHead needs the same channels on every level, got {sorted(channels)}")
    if norm in ("BN", "SyncBN"):
        raise ValueError("GFLHead shares its towers across levels; use 'GN' rather than BatchNorm")
    return channels.pop()


def _box_channels(reg_max: int, box_representation: str) -> int:
    """
    Box outputs per location, as the model's box transform reads them:
    ``4 * (n + 1)`` edge-distribution logits, or 4 distances ("dirac").
    """
    if box_representation not in BOX_REPRESENTATIONS:
        raise ValueError(
            f"box_representation must be one of {BOX_REPRESENTATIONS}, got {box_representation!r}"
        )
    if box_representation == "dirac":
        return DiracBox2BoxTransform().num_outputs
    return DistributionBox2BoxTransform(reg_max).num_outputs


def _check_quality(quality: str, box_representation: str, reg_max: int, dgqp_topk: int) -> None:
    """GFL V2's quality reads the top ``dgqp_topk`` bins of each edge distribution: they must exist."""
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    if quality != "dgqp":
        return
    if box_representation != "distribution":
        raise ValueError(
            "quality='dgqp' predicts the quality from the edge distributions: it needs "
            "box_representation='distribution'"
        )
    if reg_max + 1 < dgqp_topk:
        raise ValueError(
            f"quality='dgqp' reads the top {dgqp_topk} of each edge's n + 1 bins, but reg_max={reg_max} "
            f"gives {reg_max + 1}"
        )


class GFLHead(nn.Module):
    """
    Two towers of ``len(conv_dims)`` conv3x3 + norm + ReLU, shared across
    levels; ``cls_score`` predicts one joint classification-IoU logit per
    class, ``bbox_pred`` the box outputs (the ``4 * (n + 1)`` logits of the
    four edge distributions, or 4 distances with ``box_representation="dirac"``),
    multiplied by a learnable scalar per level. A quality of its own adds one
    logit per location: ``quality_pred`` from the regression tower for
    "centerness" / "iou" (FCOS/ATSS's branch), ``dgqp`` from the statistics of
    the edge distributions for "dgqp" (GFL V2's
    :class:`DistributionGuidedQualityPredictor`).

    The layout follows from the model's settings ``reg_max``,
    ``box_representation`` and ``quality``, which the configs pass down by
    interpolation (``reg_max="${..reg_max}"``, as ``num_classes``), so that one
    override of the model's setting changes both.

    Args:
        input_shape: one ShapeSpec per FPN level (all with the same channels).
        num_classes: number of foreground classes C.
        conv_dims: output channels of each tower conv.
        norm: normalisation of the tower convs (see ``detectron2.layers.get_norm``);
            GFL uses "GN" (GroupNorm with 32 groups).
        prior_prob: initial foreground probability of the classifier.
        reg_max, box_representation, quality: the model's settings
            (:class:`GFL`, :class:`GFLVariant`) that decide the layout.
        dgqp_topk, dgqp_channels, dgqp_add_mean, dgqp_init_std: GFL V2's
            predictor: top-k per edge (4), hidden width (64), mean statistic
            (on) and initialisation std (0.01).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        conv_dims: List[int],
        norm: str = "GN",
        prior_prob: float = 0.01,
        reg_max: int = 16,
        box_representation: str = "distribution",
        quality: str = "joint",
        dgqp_topk: int = 4,
        dgqp_channels: int = 64,
        dgqp_add_mean: bool = True,
        dgqp_init_std: float = 0.01,
    ):
        super().__init__()
        in_channels = _shared_in_channels(input_shape, norm)
        self.num_classes = num_classes
        self.reg_max, self.box_representation, self.quality = (
            int(reg_max),
            box_representation,
            quality,
        )
        self.box_channels = _box_channels(self.reg_max, box_representation)
        _check_quality(quality, box_representation, self.reg_max, dgqp_topk)
        self.has_quality_branch = quality in SEPARATE_QUALITIES
        self.has_quality_predictor = quality == "dgqp"
        self._num_levels = len(input_shape)

        self.cls_subnet = _tower(in_channels, conv_dims, norm)
        self.bbox_subnet = _tower(in_channels, conv_dims, norm)
        last = conv_dims[-1] if conv_dims else in_channels
        self.cls_score = nn.Conv2d(last, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(last, self.box_channels, kernel_size=3, stride=1, padding=1)
        if self.has_quality_branch:
            self.quality_pred = nn.Conv2d(last, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(self._num_levels)])
        self._init_weights(prior_prob)
        # built after the towers' initialisation, so that V1's parameters draw the same random numbers
        if self.has_quality_predictor:
            self.dgqp = DistributionGuidedQualityPredictor(
                dgqp_topk, dgqp_channels, dgqp_add_mean, dgqp_init_std
            )

    def _init_weights(self, prior_prob: float) -> None:
        """Convs normal(0, 0.01), biases 0; the classifier's bias gives every class ``prior_prob``."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        g = cfg.MODEL.GFL
        return {
            "input_shape": input_shape,
            "num_classes": g.NUM_CLASSES,
            "conv_dims": [input_shape[0].channels] * g.NUM_CONVS,
            "norm": g.NORM,
            "prior_prob": g.PRIOR_PROB,
            "reg_max": g.REG_MAX,
            "box_representation": g.BOX_REPRESENTATION,
            "quality": g.QUALITY,
            "dgqp_topk": g.DGQP_TOPK,
            "dgqp_channels": g.DGQP_CHANNELS,
            "dgqp_add_mean": g.DGQP_ADD_MEAN,
            "dgqp_init_std": g.DGQP_INIT_STD,
        }

    def forward(self, features: List[Tensor]) -> List[List[Tensor]]:
        """
        Args:
            features: FPN maps, high to low resolution, each (N, Cin, Hi, Wi).

        Returns:
            [cls_logits, box_regs] (+ [quality_logits] with a quality branch
            or ``dgqp``): per level, (N, C, Hi, Wi), (N, box_channels, Hi, Wi)
            and (N, 1, Hi, Wi).
        """
        if len(features) != self._num_levels:
            raise ValueError(f"GFLHead built for {self._num_levels} levels, got {len(features)}")
        cls_logits, box_regs, quality_logits = [], [], []
        for feature, scale in zip(features, self.scales):
            cls_logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            box_regs.append(scale(self.bbox_pred(box_feature)))
            if self.has_quality_branch:
                quality_logits.append(self.quality_pred(box_feature))
        if self.has_quality_predictor:  # all levels at once
            quality_logits = self.dgqp(box_regs)
        if quality_logits:
            return [cls_logits, box_regs, quality_logits]
        return [cls_logits, box_regs]
