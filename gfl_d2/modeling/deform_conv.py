"""
Deformable convolution (:paper:`deformconv`, v1, and the modulated v2) without
detectron2's compiled ops: the layers on ``torchvision.ops.deform_conv2d``,
which runs on the CPU and CUDA, forward and backward, and traces for
TorchScript; under autocast the layers compute in float32.

The layers keep detectron2's parameters and names (``weight`` (C_out,
C_in / groups, k, k), ``bias``, ``norm``), and the offset layout that
detectron2, mmcv and torchvision share: per deformable group, per kernel
point (row-major), the (dy, dx) pair. So detectron2's ``DeformBottleneckBlock``
state dicts, and MMDetection's DCN weights once renamed, load unchanged.
"""

import math
from typing import Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = [
    "DeformConv",
    "ModulatedDeformConv",
    "DeformBottleneckBlock",
    "deformable_3x3",
    "deform_forward",
]


class DeformConv(nn.Module):
    """
    Deformable convolution v1: ``forward(x, offset)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
        groups: as ``nn.Conv2d``.
        deformable_groups: channel groups that share one set of offsets.
        bias: add a learnt bias (detectron2's default: no).
        norm, activation: applied to the output, as detectron2's ``Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible "
                f"by groups {groups}"
            )
        if in_channels % deformable_groups:
            raise ValueError(
                f"in_channels {in_channels} must be divisible by deformable_groups "
                f"{deformable_groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.deformable_groups = groups, deformable_groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.norm, self.activation = norm, activation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @property
    def offset_channels(self) -> int:
        """Channels of the offset input: (dy, dx) per kernel point and deformable group."""
        return 2 * self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]

    def _deform(self, x: Tensor, offset: Tensor, mask: Optional[Tensor]) -> Tensor:
        # float32 under autocast: torchvision's CPU kernel has no half-precision version, and
        # the bilinear weights of sub-pixel offsets need the precision
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        x, offset, weight = x.to(dtype), offset.to(dtype), self.weight.to(dtype)
        mask = None if mask is None else mask.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            out = deform_conv2d(
                x, offset, weight, bias, self.stride, self.padding, self.dilation, mask
            )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        """
        Args:
            x: (N, C_in, H, W).
            offset: (N, 2 * deformable_groups * k * k, H', W'), the (dy, dx)
                pairs in pixels.

        Returns:
            (N, C_out, H', W').
        """
        return self._deform(x, offset, None)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deformable_groups={self.deformable_groups}, "
            f"bias={self.bias is not None}"
        )


class ModulatedDeformConv(DeformConv):
    """
    Modulated deformable convolution (v2): ``forward(x, offset, mask)``, each
    sampled value weighted by its mask in [0, 1]. Bias on by default, as
    detectron2's.
    """

    def __init__(self, *args, bias: bool = True, **kwargs):
        super().__init__(*args, bias=bias, **kwargs)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            x: (N, C_in, H, W).
            offset: (N, 2 * deformable_groups * k * k, H', W').
            mask: (N, deformable_groups * k * k, H', W').
        """
        return self._deform(x, offset, mask)


def deformable_3x3(
    channels: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    modulated: bool = False,
    deformable_groups: int = 1,
    norm: Optional[nn.Module] = None,
):
    """
    A deformable 3x3 convolution (``channels`` in and out, no bias) and the
    plain convolution that predicts its offsets (and mask, when modulated)
    from the same input, zero-initialised so that the pair starts as a plain
    3x3 convolution, as in detectron2 and mmcv.

    Returns:
        (deformable conv, offset conv): run them with :func:`deform_forward`.
    """
    layer = ModulatedDeformConv if modulated else DeformConv
    kernel_points = 9  # 3x3: (dy, dx) per point, and a mask value when modulated
    offset_channels = (3 if modulated else 2) * kernel_points * deformable_groups
    offset_conv = Conv2d(
        channels, offset_channels, kernel_size=3, stride=stride, padding=dilation,
        dilation=dilation,
    )  # fmt: skip
    nn.init.constant_(offset_conv.weight, 0)
    nn.init.constant_(offset_conv.bias, 0)
    conv = layer(
        channels, channels, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
        deformable_groups=deformable_groups, bias=False, norm=norm,
    )  # fmt: skip
    return conv, offset_conv


def deform_forward(conv: DeformConv, offset_conv: nn.Module, x: Tensor) -> Tensor:
    """
    ``conv`` on ``x`` (N, C, H, W) with the offsets ``offset_conv`` predicts
    from ``x``; for a modulated ``conv``, detectron2's and mmcv's split: the
    first two thirds of the channels are the offsets, the rest, through a
    sigmoid, the mask.
    """
    predicted = offset_conv(x)
    if isinstance(conv, ModulatedDeformConv):
        offset_a, offset_b, mask = torch.chunk(predicted, 3, dim=1)
        return conv(x, torch.cat((offset_a, offset_b), dim=1), mask.sigmoid())
    return conv(x, predicted)


class DeformBottleneckBlock(CNNBlockBase):
    """
    The bottleneck block of detectron2's ResNet with a deformable 3x3
    convolution: detectron2's ``DeformBottleneckBlock`` (same arguments,
    parameter names and initialisation; the offset conv ``conv2_offset``
    starts at zero, so the block starts as a plain bottleneck) on torchvision's
    op, since detectron2's needs its compiled extension.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                norm=get_norm(norm, out_channels),
            )  # fmt: skip
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )  # fmt: skip
        self.conv2, self.conv2_offset = deformable_3x3(
            bottleneck_channels, stride_3x3, dilation, num_groups, deform_modulated,
            deform_num_groups, get_norm(norm, bottleneck_channels),
        )  # fmt: skip
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, kernel_size=1, bias=False,
            norm=get_norm(norm, out_channels),
        )  # fmt: skip
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                weight_init.c2_msra_fill(conv)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = deform_forward(self.conv2, self.conv2_offset, out)
        out = self.conv3(F.relu_(out))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)
