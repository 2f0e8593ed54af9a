"""The GFL head: shared classification and regression towers over FPN levels."""
import math
from typing import List

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm

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


BOX_REPRESENTATIONS = ("distribution", "dirac")
QUALITY_REPRESENTATIONS = ("joint", "centerness", "iou", "none")
SEPARATE_QUALITIES = ("centerness", "iou")  # the ones with a branch of their own


class GFLHead(nn.Module):
    """
    Two towers of ``len(conv_dims)`` conv3x3 + norm + ReLU, shared across
    levels; ``cls_score`` predicts one joint classification-IoU logit per class,
    ``bbox_pred`` the ``4 * (reg_max + 1)`` logits of the four edge
    distributions (l, t, r, b, each ``reg_max + 1`` bins contiguous), multiplied
    by a learnable scalar per level.

    For the paper's ablations the head can also predict plain distances (4
    channels, ``box_representation="dirac"``) and a separate localisation
    quality logit (``quality="centerness"`` or ``"iou"``, a conv on the
    regression tower, as in FCOS/ATSS).
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        conv_dims: List[int],
        norm: str = "GN",
        reg_max: int = 16,
        prior_prob: float = 0.01,
        box_representation: str = "distribution",
        quality: str = "joint",
    ):
        """
        Args:
            input_shape: one ShapeSpec per FPN level (all with the same channels).
            num_classes: number of foreground classes C.
            conv_dims: output channels of each tower conv.
            norm: normalisation of the tower convs (see ``detectron2.layers.get_norm``);
                GFL uses "GN" (GroupNorm with 32 groups).
            reg_max: n, the largest bin of the edge distributions.
            prior_prob: initial foreground probability of the classifier.
            box_representation: "distribution" (4 (reg_max+1) outputs) or
                "dirac" (4 outputs, one distance per edge).
            quality: "joint" or "none" (no extra output), "centerness" or "iou"
                (a separate quality branch, one logit per location).
        """
        super().__init__()
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(f"GFLHead needs the same channels on every level, got {sorted(channels)}")
        if norm in ("BN", "SyncBN"):
            raise ValueError("GFLHead shares its towers across levels; use 'GN' rather than BatchNorm")
        if box_representation not in BOX_REPRESENTATIONS:
            raise ValueError(f"box_representation must be one of {BOX_REPRESENTATIONS}, got {box_representation!r}")
        if quality not in QUALITY_REPRESENTATIONS:
            raise ValueError(f"quality must be one of {QUALITY_REPRESENTATIONS}, got {quality!r}")
        in_channels = channels.pop()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.box_representation = box_representation
        self.quality = quality
        self.has_quality_branch = quality in SEPARATE_QUALITIES
        self._num_levels = len(input_shape)

        self.cls_subnet = _tower(in_channels, conv_dims, norm)
        self.bbox_subnet = _tower(in_channels, conv_dims, norm)
        last = conv_dims[-1] if conv_dims else in_channels
        self.cls_score = nn.Conv2d(last, num_classes, kernel_size=3, stride=1, padding=1)
        box_channels = 4 * (reg_max + 1) if box_representation == "distribution" else 4
        self.bbox_pred = nn.Conv2d(last, box_channels, kernel_size=3, stride=1, padding=1)
        if self.has_quality_branch:
            self.quality_pred = nn.Conv2d(last, 1, kernel_size=3, stride=1, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(self._num_levels)])

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.GFL.NUM_CLASSES,
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.GFL.NUM_CONVS,
            "norm": cfg.MODEL.GFL.NORM,
            "reg_max": cfg.MODEL.GFL.REG_MAX,
            "prior_prob": cfg.MODEL.GFL.PRIOR_PROB,
            "box_representation": cfg.MODEL.GFL.BOX_REPRESENTATION,
            "quality": cfg.MODEL.GFL.QUALITY,
        }

    def forward(self, features: List[Tensor]) -> List[List[Tensor]]:
        """
        Args:
            features: FPN maps, high to low resolution, each (N, Cin, Hi, Wi).

        Returns:
            [cls_logits, box_preds] (+ [quality_logits] with a quality branch):
            per level, (N, C, Hi, Wi), (N, 4 * (reg_max + 1), Hi, Wi) (or
            (N, 4, Hi, Wi) for "dirac") and (N, 1, Hi, Wi).
        """
        if len(features) != self._num_levels:
            raise ValueError(f"GFLHead built for {self._num_levels} levels, got {len(features)}")
        cls_logits, box_preds, quality_logits = [], [], []
        for feature, scale in zip(features, self.scales):
            cls_logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            box_preds.append(scale(self.bbox_pred(box_feature)))
            if self.has_quality_branch:
                quality_logits.append(self.quality_pred(box_feature))
        if self.has_quality_branch:
            return [cls_logits, box_preds, quality_logits]
        return [cls_logits, box_preds]
