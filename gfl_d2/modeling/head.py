"""The GFL head: shared classification and regression towers over FPN levels."""

import math
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from torch import Tensor, nn

from .box_coding import DiracBox2BoxTransform, DistributionBox2BoxTransform
from .dgqp import DistributionGuidedQualityPredictor
from .shufflenet import activation_layer
from .variants import BOX_REPRESENTATIONS, SEPARATE_QUALITIES, check_quality

__all__ = ["GFLHead", "Scale", "build_box2box_transform"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level on the regression output)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(in_channels: int, conv_dims: List[int], norm: str, activation: str) -> nn.Sequential:
    layers = []
    for in_ch, out_ch in zip([in_channels] + list(conv_dims), conv_dims):
        # a conv followed by a norm layer needs no bias (as in the released models)
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=not norm))
        if norm:
            layers.append(get_norm(norm, out_ch))
        layers.append(activation_layer(activation))
    return nn.Sequential(*layers)


def _shared_in_channels(input_shape: List[ShapeSpec], norm) -> int:
    """The one channel count of all FPN levels, which towers shared across levels need."""
    channels = {s.channels for s in input_shape}
    if len(channels) != 1:
        raise ValueError(f"GFLHead needs the same channels on every level, got {sorted(channels)}")
    if norm in ("BN", "SyncBN"):
        raise ValueError("GFLHead shares its towers across levels; use 'GN' rather than BatchNorm")
    return channels.pop()


def _check_dgqp_bins(box2box_transform, dgqp_topk: int) -> None:
    """
    GFL V2's quality reads the top ``dgqp_topk`` bins of each edge distribution: they must exist.
    """
    if box2box_transform.num_outputs // 4 < dgqp_topk:
        raise ValueError(
            f"quality='dgqp' reads the top {dgqp_topk} of each edge's n + 1 bins, but "
            f"{box2box_transform} gives {box2box_transform.num_outputs // 4}"
        )


def build_box2box_transform(cfg):
    """
    The box representation of a yacs config: ``MODEL.GFL.BOX_REPRESENTATION`` and its settings.
    """
    g = cfg.MODEL.GFL
    if g.BOX_REPRESENTATION not in BOX_REPRESENTATIONS:
        raise ValueError(
            f"MODEL.GFL.BOX_REPRESENTATION must be one of {BOX_REPRESENTATIONS}, "
            f"got {g.BOX_REPRESENTATION!r}"
        )
    if g.BOX_REPRESENTATION == "dirac":
        return DiracBox2BoxTransform(g.ANCHOR_SCALE)
    return DistributionBox2BoxTransform(g.REG_MAX, g.BIN_WIDTH)


class GFLHead(nn.Module):
    """
    Two towers of ``len(conv_dims)`` conv3x3 + norm + ReLU, shared across
    levels; ``cls_score`` predicts one joint classification-IoU logit per
    class, ``bbox_pred`` the box outputs its ``box2box_transform`` decodes (the
    ``4 * (n + 1)`` logits of the four edge distributions, or 4 distances),
    multiplied by a learnable scalar per level. A quality of its own adds one
    logit per location: ``quality_pred`` from the regression tower for
    "centerness" / "iou" (FCOS/ATSS's branch), ``dgqp`` from the statistics of
    the edge distributions for "dgqp" (GFL V2's
    :class:`DistributionGuidedQualityPredictor`).

    The head is the one source of its output layout: the model
    (:class:`~gfl_d2.modeling.GFL`) decodes with the head's ``box2box_transform``
    and trains the head's ``quality``.

    Args:
        input_shape: one ShapeSpec per FPN level (all with the same channels).
        num_classes: number of foreground classes C.
        conv_dims: output channels of each tower conv.
        norm: normalisation of the tower convs (see ``detectron2.layers.get_norm``);
            GFL uses "GN" (GroupNorm with 32 groups).
        activation: of the tower convs: "ReLU" (GFL's) or "LeakyReLU" (slope
            0.1: NanoDet-Plus's auxiliary head, NanoDet's ``SimpleConvHead``).
        prior_prob: initial foreground probability of the classifier.
        box2box_transform: what the box outputs are
            (:class:`DistributionBox2BoxTransform`: n and Δ of the bins;
            :class:`DiracBox2BoxTransform`: one distance per edge); its
            ``num_outputs`` is the number of box channels.
        quality: "joint" (in the classification score), "dgqp" (GFL V2),
            "centerness" / "iou" (a separate branch) or "none"; see
            :class:`~gfl_d2.modeling.GFLVariant`.
        dgqp_topk, dgqp_channels, dgqp_add_mean, dgqp_init_std: GFL V2's
            predictor: top-k per edge (4), hidden width (64), mean statistic
            (on) and initialisation std (0.01).
    """

    # the layer whose output channels are the box outputs: its shape fixes n (training's bin check)
    box_layer = "bbox_pred"

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        conv_dims: List[int],
        norm: str = "GN",
        activation: str = "ReLU",
        prior_prob: float = 0.01,
        box2box_transform,
        quality: str = "joint",
        dgqp_topk: int = 4,
        dgqp_channels: int = 64,
        dgqp_add_mean: bool = True,
        dgqp_init_std: float = 0.01,
    ):
        super().__init__()
        in_channels = _shared_in_channels(input_shape, norm)
        self.num_classes = num_classes
        self.box2box_transform, self.quality = box2box_transform, quality
        representation = "distribution" if box2box_transform.has_distributions else "dirac"
        check_quality(quality, representation)
        self.has_quality_branch = quality in SEPARATE_QUALITIES
        self.has_quality_predictor = quality == "dgqp"
        if self.has_quality_predictor:
            _check_dgqp_bins(box2box_transform, dgqp_topk)
        self._num_levels = len(input_shape)

        self.cls_subnet = _tower(in_channels, conv_dims, norm, activation)
        self.bbox_subnet = _tower(in_channels, conv_dims, norm, activation)
        last = conv_dims[-1] if conv_dims else in_channels
        self.cls_score = nn.Conv2d(last, num_classes, kernel_size=3, stride=1, padding=1)
        box_channels = box2box_transform.num_outputs
        self.bbox_pred = nn.Conv2d(last, box_channels, kernel_size=3, stride=1, padding=1)
        if self.has_quality_branch:
            self.quality_pred = nn.Conv2d(last, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(self._num_levels)])
        self._init_weights(prior_prob)
        # built after the towers' initialisation, so that V1's parameters draw
        # the same random numbers
        if self.has_quality_predictor:
            self.dgqp = DistributionGuidedQualityPredictor(
                dgqp_topk, dgqp_channels, dgqp_add_mean, dgqp_init_std
            )

    @property
    def output_channels(self) -> List[int]:
        """Channels of the outputs, in order: class logits, box outputs, (quality logit)."""
        channels = [self.num_classes, self.box2box_transform.num_outputs]
        return channels + [1] if self.has_quality_branch or self.has_quality_predictor else channels

    def _init_weights(self, prior_prob: float) -> None:
        """
        Convs normal(0, 0.01), biases 0; the classifier's bias gives every class ``prior_prob``.
        """
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
            "box2box_transform": build_box2box_transform(cfg),
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
