"""The GFL head: shared classification and regression towers over FPN levels."""
import math
import warnings
from typing import List, Optional

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm

from .dgqp import DistributionGuidedQualityPredictor
from .variants import SEPARATE_QUALITIES, GFLVariant

__all__ = ["GFLHead", "Scale"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level on the regression output)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _translate_deprecated(box_channels, quality_branch, reg_max, box_representation, quality):
    """The head's settings of the previous release (reg_max, box_representation, quality) -> its layout."""
    old = {k: v for k, v in (("reg_max", reg_max), ("box_representation", box_representation), ("quality", quality))
           if v is not None}
    if not old:
        return box_channels, quality_branch
    warnings.warn(
        f"GFLHead({', '.join(f'{k}={v!r}' for k, v in old.items())}) is deprecated: the head takes its layout "
        "(box_channels, quality_branch); reg_max, box_representation and quality are the model's settings",
        FutureWarning,
        stacklevel=3,
    )
    box_channels = 4 if old.get("box_representation") == "dirac" else 4 * (old.get("reg_max", 16) + 1)
    return box_channels, old.get("quality") in SEPARATE_QUALITIES


def _tower(in_channels: int, conv_dims: List[int], norm: str) -> nn.Sequential:
    layers = []
    for in_ch, out_ch in zip([in_channels] + list(conv_dims), conv_dims):
        # a conv followed by a norm layer needs no bias (as in the released models)
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=not norm))
        if norm:
            layers.append(get_norm(norm, out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class GFLHead(nn.Module):
    """
    Two towers of ``len(conv_dims)`` conv3x3 + norm + ReLU, shared across
    levels; ``cls_score`` predicts one joint classification-IoU logit per class,
    ``bbox_pred`` the ``box_channels`` box outputs (GFL: the ``4 * (n + 1)``
    logits of the four edge distributions), multiplied by a learnable scalar
    per level, and, with ``quality_branch``, ``quality_pred`` one quality logit
    per location from the regression tower (FCOS/ATSS's centerness or IoU
    branch), or, with ``dgqp``, one quality logit per location from the
    statistics of the edge distributions (GFL V2's distribution-guided quality
    predictor, :class:`DistributionGuidedQualityPredictor`). The head owns
    this layout; the model checks it against its box transform and variant.
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
        box_channels: int = 4 * 17,
        quality_branch: bool = False,
        dgqp: bool = False,
        dgqp_topk: int = 4,
        dgqp_channels: int = 64,
        dgqp_add_mean: bool = True,
        dgqp_init_std: float = 0.01,
        reg_max: Optional[int] = None,
        box_representation: Optional[str] = None,
        quality: Optional[str] = None,
    ):
        """
        Args:
            input_shape: one ShapeSpec per FPN level (all with the same channels).
            num_classes: number of foreground classes C.
            conv_dims: output channels of each tower conv.
            norm: normalisation of the tower convs (see ``detectron2.layers.get_norm``);
                GFL uses "GN" (GroupNorm with 32 groups).
            prior_prob: initial foreground probability of the classifier.
            box_channels: box outputs per location: ``4 * (n + 1)`` for the
                general distribution (68 for n = 16), 4 for plain distances.
            quality_branch: predict a separate quality logit per location.
            dgqp: predict the quality from the edge distributions (GFL V2);
                needs ``box_channels = 4 * (n + 1)``.
            dgqp_topk, dgqp_channels, dgqp_add_mean, dgqp_init_std: the
                predictor's top-k per edge (4), hidden width (64), mean statistic
                (on) and initialisation std (0.01).
            reg_max, box_representation, quality: deprecated (the model owns
                these settings); translated into ``box_channels`` and
                ``quality_branch`` with a warning.
        """
        super().__init__()
        box_channels, quality_branch = _translate_deprecated(
            box_channels, quality_branch, reg_max, box_representation, quality
        )
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"GFLHead needs the same channels on every level, got {sorted(channels)}")
        if norm in ("BN", "SyncBN"):
            raise ValueError("GFLHead shares its towers across levels; use 'GN' rather than BatchNorm")
        in_channels = channels.pop()
        self.num_classes = num_classes
        self.box_channels = int(box_channels)
        self.has_quality_branch = bool(quality_branch)
        self.has_quality_predictor = bool(dgqp)
        if self.has_quality_branch and self.has_quality_predictor:
            raise ValueError("GFLHead: quality_branch and dgqp are two ways to predict the quality; choose one")
        if self.has_quality_predictor and (self.box_channels % 4 or self.box_channels // 4 < dgqp_topk):
            raise ValueError(
                f"GFLHead(dgqp=True) reads edge distributions: box_channels={self.box_channels} is not "
                f"4 * (n + 1) with n + 1 >= dgqp_topk={dgqp_topk}"
            )
        self._num_levels = len(input_shape)

        self.cls_subnet = _tower(in_channels, conv_dims, norm)
        self.bbox_subnet = _tower(in_channels, conv_dims, norm)
        last = conv_dims[-1] if conv_dims else in_channels
        self.cls_score = nn.Conv2d(last, num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(last, self.box_channels, kernel_size=3, stride=1, padding=1)
        if self.has_quality_branch:
            self.quality_pred = nn.Conv2d(last, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(self._num_levels)])

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))
        # built after the towers' initialisation, so that V1's parameters draw the same random numbers
        if self.has_quality_predictor:
            self.dgqp = DistributionGuidedQualityPredictor(dgqp_topk, dgqp_channels, dgqp_add_mean, dgqp_init_std)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        g = cfg.MODEL.GFL
        variant = GFLVariant(g.CLS_LOSS, g.QUALITY, g.BOX_REPRESENTATION, g.BOX_LOSS_WEIGHTING)
        return {
            "input_shape": input_shape,
            "num_classes": g.NUM_CLASSES,
            "conv_dims": [input_shape[0].channels] * g.NUM_CONVS,
            "norm": g.NORM,
            "prior_prob": g.PRIOR_PROB,
            "box_channels": variant.box_transform(g.REG_MAX, g.BIN_WIDTH, g.ANCHOR_SCALE).num_outputs,
            "quality_branch": variant.has_quality_branch,
            "dgqp": variant.has_quality_predictor,
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
