"""
GhostPAN, NanoDet-Plus's neck, as a detectron2 ``Backbone`` around a
bottom-up network (as detectron2's ``FPN``): 1x1 convs reduce every input
level to one width; a top-down path (bilinear 2x upsampling, concatenation,
a Ghost bottleneck) and a bottom-up path (a depthwise-separable stride-2
conv, concatenation, a Ghost bottleneck); extra levels, each the sum of a
stride-2 conv of the coarsest reduced input and one of the last output.
"""

import copy
import math
from typing import Dict, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from torch import Tensor, nn
from torch.nn import functional as F

from .shufflenet import ShuffleNetV2, activation_layer

__all__ = [
    "GhostPAN",
    "GhostModule",
    "GhostBottleneck",
    "DepthwiseSeparableConv",
    "build_nanodet_plus_backbone",
]


class DepthwiseSeparableConv(nn.Module):
    """
    A depthwise k x k conv (stride ``stride``) and a 1x1 conv, each with its norm
    and activation (``act=None``: none).
    """

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, norm="BN", act="LeakyReLU"
    ):
        super().__init__()
        self.act = activation_layer(act) if act else nn.Identity()
        self.depthwise = Conv2d(
            in_channels, in_channels, kernel_size, stride=stride, padding=kernel_size // 2,
            groups=in_channels, bias=False, norm=get_norm(norm, in_channels),
        )  # fmt: skip
        self.pointwise = Conv2d(
            in_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels)
        )
        for conv in (self.depthwise, self.pointwise):
            weight_init.c2_msra_fill(conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.pointwise(self.act(self.depthwise(x))))


class GhostModule(nn.Module):
    """
    GhostNet's module: a 1x1 conv to half the output channels (rounded up), and
    a depthwise 3x3 conv of those ("cheap") for the rest; concatenated.
    ``act=None``: no activation.
    """

    def __init__(self, in_channels, out_channels, norm="BN", act="LeakyReLU"):
        super().__init__()
        primary = math.ceil(out_channels / 2)
        self.out_channels = out_channels
        self.act = activation_layer(act) if act else nn.Identity()
        self.primary = Conv2d(in_channels, primary, 1, bias=False, norm=get_norm(norm, primary))
        self.cheap = Conv2d(
            primary, primary, 3, padding=1, groups=primary, bias=False,
            norm=get_norm(norm, primary),
        )  # fmt: skip
        for conv in (self.primary, self.cheap):
            weight_init.c2_msra_fill(conv)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.primary(x))
        x = torch.cat([x, self.act(self.cheap(x))], dim=1)
        # an even width needs no cut (nor an export a Slice, which breaks ONNX Runtime's
        # blocked layout around it)
        return (
            x if 2 * self.primary.out_channels == self.out_channels else x[:, : self.out_channels]
        )


class GhostBottleneck(nn.Module):
    """
    Two Ghost modules (the second without activation) plus a shortcut: the
    input itself, or a depthwise-separable conv without activations when the
    width changes.
    """

    def __init__(self, in_channels, mid_channels, out_channels, kernel_size=5, norm="BN",
                 act="LeakyReLU"):  # fmt: skip
        super().__init__()
        self.ghost1 = GhostModule(in_channels, mid_channels, norm, act)
        self.ghost2 = GhostModule(mid_channels, out_channels, norm, None)
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = DepthwiseSeparableConv(
                in_channels, out_channels, kernel_size, 1, norm, act=None
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.ghost2(self.ghost1(x)) + shortcut


class GhostPAN(Backbone):
    """
    Args:
        bottom_up: a ``Backbone`` (e.g. :class:`~gfl_d2.modeling.shufflenet.ShuffleNetV2`).
        in_features: its outputs, finest first (strides doubling).
        out_channels: the width of every output level (96 in NanoDet-Plus-m).
        kernel_size: of the depthwise convs (5).
        num_extra_levels: levels beyond the coarsest input (1: stride 64).
        num_blocks: Ghost bottlenecks per merge (1).
        norm, activation: as :class:`ShuffleNetV2`'s.

    Outputs ``p3``, ``p4``, ... named by their strides' log2 (8 -> p3).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int = 96,
        kernel_size: int = 5,
        num_extra_levels: int = 1,
        num_blocks: int = 1,
        norm="BN",
        activation: str = "LeakyReLU",
    ):
        super().__init__()
        shapes = bottom_up.output_shape()
        strides = [shapes[f].stride for f in in_features]
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise ValueError(
                f"in_features {list(in_features)} must double in stride, got {strides}"
            )
        self.bottom_up, self.in_features = bottom_up, list(in_features)
        c, n = out_channels, len(in_features)
        self.reduce = nn.ModuleList(
            Conv2d(shapes[f].channels, c, 1, bias=False, norm=get_norm(norm, c))
            for f in in_features
        )
        for conv in self.reduce:
            weight_init.c2_msra_fill(conv)
        self.act = activation_layer(activation)

        def merge():
            return nn.Sequential(
                *[GhostBottleneck(2 * c if i == 0 else c, c, c, kernel_size, norm, activation)
                  for i in range(num_blocks)]
            )  # fmt: skip

        def down():
            return DepthwiseSeparableConv(c, c, kernel_size, 2, norm, activation)

        self.top_down = nn.ModuleList(merge() for _ in range(n - 1))
        self.downsample = nn.ModuleList(down() for _ in range(n - 1))
        self.bottom_up_merge = nn.ModuleList(merge() for _ in range(n - 1))
        self.extra_in = nn.ModuleList(down() for _ in range(num_extra_levels))
        self.extra_out = nn.ModuleList(down() for _ in range(num_extra_levels))
        all_strides = strides + [strides[-1] * 2 ** (i + 1) for i in range(num_extra_levels)]
        self._out_features = [f"p{int(math.log2(s))}" for s in all_strides]
        self._out_feature_channels = {f: c for f in self._out_features}
        self._out_feature_strides = dict(zip(self._out_features, all_strides))

    @property
    def size_divisibility(self) -> int:
        return self._out_feature_strides[self._out_features[-1]]

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """(N, 3, H, W) -> {"p3": (N, C, H/8, W/8), ..., one entry per output level}."""
        return self.forward_neck(self.bottom_up(x))

    def forward_neck(self, features: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """
        The layers after the bottom-up network: its outputs ``in_features``
        (N, Ci, H/si, W/si) -> the output levels, as :meth:`forward`. NanoDet-Plus's
        auxiliary neck (:meth:`copy_neck`) reads the same bottom-up features.
        """
        reduced = [self.act(conv(features[f])) for conv, f in zip(self.reduce, self.in_features)]
        # top-down: coarse to fine, each level merged with the upsampled one above it
        inner = [reduced[-1]]
        for i in range(len(reduced) - 2, -1, -1):
            up = F.interpolate(inner[0], scale_factor=2.0, mode="bilinear", align_corners=False)
            merged = self.top_down[len(reduced) - 2 - i](torch.cat([up, reduced[i]], dim=1))
            inner.insert(0, merged)
        # bottom-up: fine to coarse, each level merged with the downsampled one below it
        outs = [inner[0]]
        for i in range(len(reduced) - 1):
            down = self.downsample[i](outs[-1])
            outs.append(self.bottom_up_merge[i](torch.cat([down, inner[i + 1]], dim=1)))
        for extra_in, extra_out in zip(self.extra_in, self.extra_out):
            outs.append(extra_in(reduced[-1]) + extra_out(outs[-1]))
        return dict(zip(self._out_features, outs))

    def copy_neck(self) -> "GhostPAN":
        """
        A deep copy of the layers after the bottom-up network (the same weights),
        without it (``bottom_up`` None): it runs :meth:`forward_neck` only.
        """
        # the memo stands the copy's bottom-up network in with None: it is not copied
        return copy.deepcopy(self, memo={id(self.bottom_up): None})

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_nanodet_plus_backbone(cfg, input_shape: ShapeSpec) -> GhostPAN:
    """
    yacs builder: NanoDet-Plus's ShuffleNetV2 (``MODEL.SHUFFLENET_V2``) inside a
    GhostPAN (``MODEL.GHOST_PAN``).
    """
    s, p = cfg.MODEL.SHUFFLENET_V2, cfg.MODEL.GHOST_PAN
    bottom_up = ShuffleNetV2(
        s.SIZE, s.OUT_FEATURES, s.NORM, s.ACTIVATION, in_channels=input_shape.channels
    )
    return GhostPAN(
        bottom_up, p.IN_FEATURES, p.OUT_CHANNELS, p.KERNEL_SIZE, p.NUM_EXTRA_LEVELS,
        p.NUM_BLOCKS, p.NORM, p.ACTIVATION,
    )  # fmt: skip
