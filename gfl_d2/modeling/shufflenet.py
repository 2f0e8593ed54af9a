"""
ShuffleNetV2 (Ma et al., ECCV 2018) as a detectron2 ``Backbone``: the
backbone of NanoDet-Plus (stages 2-4 at strides 8, 16, 32, no ``conv5``,
LeakyReLU 0.1) and of torchvision's classifiers (ReLU). Parameters follow
detectron2's naming (a ``Conv2d`` with its ``norm``); the converter maps
torchvision's and NanoDet's ``conv1.{0,1}``, ``stageN.M.branch{1,2}.K``.
"""

from typing import Dict, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import Backbone
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ShuffleNetV2",
    "ShuffleV2Block",
    "channel_shuffle",
    "shuffle_order",
    "activation_layer",
    "SHUFFLENET_V2_WIDTHS",
]

# output channels of the stem and of stages 2-4, per width multiplier
SHUFFLENET_V2_WIDTHS = {
    "0.5x": (24, 48, 96, 192),
    "1.0x": (24, 116, 232, 464),
    "1.5x": (24, 176, 352, 704),
    "2.0x": (24, 244, 488, 976),
}
STAGE_BLOCKS = (4, 8, 4)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, C, H, W) with its channels read group by group -> interleaved across the groups."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def shuffle_order(channels: int, groups: int) -> Tensor:
    """(C,) the input channel of each output channel of :func:`channel_shuffle`."""
    return torch.arange(channels).reshape(groups, channels // groups).t().reshape(-1)


def activation_layer(name: str) -> nn.Module:
    """NanoDet's activations by name: "LeakyReLU" (slope 0.1) or "ReLU"."""
    if name == "LeakyReLU":
        return nn.LeakyReLU(0.1, inplace=True)  # NanoDet's
    if name == "ReLU":
        return nn.ReLU(inplace=True)
    raise ValueError(f"activation must be 'ReLU' or 'LeakyReLU' (slope 0.1), got {name!r}")


class ShuffleV2Block(CNNBlockBase):
    """
    ShuffleNetV2's unit. Stride 1: half the channels pass, the other half go
    through 1x1 -> depthwise 3x3 -> 1x1. Stride 2: both halves come from the
    whole input, one through depthwise 3x3 (stride 2) -> 1x1, the other as
    above. Then the channels of the two halves are interleaved.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm="BN", activation="ReLU"
    ):
        super().__init__(in_channels, out_channels, stride)
        half = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 unit keeps its {in_channels} channels, not {out_channels}"
            )
        self.act = activation_layer(activation)
        if stride > 1:
            self.branch1_dw = Conv2d(
                in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels,
                bias=False, norm=get_norm(norm, in_channels),
            )  # fmt: skip
            self.branch1_pw = Conv2d(in_channels, half, 1, bias=False, norm=get_norm(norm, half))
        self.branch2_pw1 = Conv2d(
            in_channels if stride > 1 else half, half, 1, bias=False, norm=get_norm(norm, half)
        )
        self.branch2_dw = Conv2d(
            half, half, 3, stride=stride, padding=1, groups=half, bias=False,
            norm=get_norm(norm, half),
        )  # fmt: skip
        self.branch2_pw2 = Conv2d(half, half, 1, bias=False, norm=get_norm(norm, half))
        for m in self.children():
            if isinstance(m, Conv2d):
                weight_init.c2_msra_fill(m)
        # the shuffle as a gather by a constant order: an export has no shape arithmetic for it
        # (a reshape needs the batch and size of the input, dynamic in an export)
        self.register_buffer("shuffle_order", shuffle_order(out_channels, 2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        if self.stride == 1:
            # sizes from the module, not the tensor: an export gets a Split of constant sizes
            half = self.out_channels // 2
            passed, x = x.split([half, half], dim=1)
        else:
            passed = self.act(self.branch1_pw(self.branch1_dw(x)))
        x = self.branch2_dw(self.act(self.branch2_pw1(x)))
        x = self.act(self.branch2_pw2(x))
        return torch.cat((passed, x), dim=1).index_select(1, self.shuffle_order)


class ShuffleNetV2(Backbone):
    """
    The stem (3x3 conv, stride 2, and a 3x3 max-pool, stride 2) and stages
    ``stage2``-``stage4`` (4, 8 and 4 units, the first of stride 2): outputs
    at strides 8, 16 and 32.

    Args:
        size: width multiplier, one of ``SHUFFLENET_V2_WIDTHS`` ("1.0x": 116,
            232, 464 channels).
        out_features: of "stage2", "stage3", "stage4".
        norm: detectron2's norm name ("BN", "FrozenBN", "SyncBN", ...).
        activation: "ReLU" (torchvision's) or "LeakyReLU" (slope 0.1, NanoDet's).
    """

    def __init__(
        self,
        size: str = "1.0x",
        out_features: Sequence[str] = ("stage2", "stage3", "stage4"),
        norm="BN",
        activation: str = "LeakyReLU",
        in_channels: int = 3,
    ):
        super().__init__()
        if size not in SHUFFLENET_V2_WIDTHS:
            raise ValueError(f"size must be one of {sorted(SHUFFLENET_V2_WIDTHS)}, got {size!r}")
        widths = SHUFFLENET_V2_WIDTHS[size]
        names = ("stage2", "stage3", "stage4")
        unknown = set(out_features) - set(names)
        if unknown or not out_features:
            raise ValueError(f"out_features must be some of {names}, got {list(out_features)}")
        self.act = activation_layer(activation)
        self.stem = Conv2d(
            in_channels, widths[0], 3, stride=2, padding=1, bias=False,
            norm=get_norm(norm, widths[0]),
        )  # fmt: skip
        weight_init.c2_msra_fill(self.stem)
        self._out_features = [n for n in names if n in out_features]
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        channels = widths[0]
        for i, (name, blocks, width) in enumerate(zip(names, STAGE_BLOCKS, widths[1:])):
            units = [ShuffleV2Block(channels, width, 2, norm, activation)]
            units += [ShuffleV2Block(width, width, 1, norm, activation) for _ in range(blocks - 1)]
            self.add_module(name, nn.Sequential(*units))
            self._out_feature_channels[name], self._out_feature_strides[name] = width, 8 * 2**i
            channels = width

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """(N, C_in, H, W) -> {"stage2": (N, C2, H/8, W/8), "stage3": ..., "stage4": ...}."""
        x = F.max_pool2d(self.act(self.stem(x)), kernel_size=3, stride=2, padding=1)
        outputs = {}
        for name in ("stage2", "stage3", "stage4"):
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
