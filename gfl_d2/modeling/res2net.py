"""
Res2Net-v1d (Gao et al., TPAMI 2021) as a detectron2 ``ResNet``: the deep
stem (three 3x3 convs), bottlenecks whose 3x3 conv is split into ``scales``
groups of channels chained by residual sums, and average-pool downsampling on
the shortcut; deformable split convs in the stages flagged, as GFL V2's
Res2Net-101-DCN. Built from detectron2's ``ResNet`` and ``CNNBlockBase``, so
``freeze_at``, ``out_features`` and FPN work as for a ResNet.
"""

import math
from typing import Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone import ResNet
from torch import Tensor, nn
from torch.nn import functional as F

from .deform_conv import deform_forward, deformable_3x3

__all__ = ["DeepStem", "Bottle2neckBlock", "make_res2net_stages"]


class DeepStem(CNNBlockBase):
    """
    The v1d stem: 3x3 convs ``in -> out/2`` (stride 2) ``-> out/2 -> out``,
    each with its norm and a ReLU, then a 3x3 max-pool of stride 2: stride 4.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        mid = out_channels // 2
        widths = [(in_channels, mid, 2), (mid, mid, 1), (mid, out_channels, 1)]
        for i, (c_in, c_out, stride) in enumerate(widths, start=1):
            conv = Conv2d(
                c_in, c_out, 3, stride=stride, padding=1, bias=False, norm=get_norm(norm, c_out)
            )
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i}", conv)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H/4, W/4)."""
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu_(conv(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottle2neckBlock(CNNBlockBase):
    """
    Res2Net's bottleneck: a 1x1 conv to ``scales * split_channels``, split in
    ``scales`` groups; groups 1..s-1 each pass a 3x3 conv, group i (> 1) after
    adding the previous group's output (``hierarchical``; the first block of a
    stage, which changes width or stride, convolves each group alone); the
    last group passes unchanged (average-pooled when strided); a 1x1 conv to
    ``out_channels``. The shortcut average-pools before its 1x1 projection.

    Args:
        in_channels, out_channels: block input and output channels.
        split_channels: channels per group (26, 52, 104, 208 in 26w x 4s).
        scales: number of groups.
        stride: stride of the 3x3 convs (and of the shortcut's pooling).
        hierarchical: add the previous group's output before each 3x3 conv.
        deform: deformable 3x3 convs (offset convs ``convs_offset.i``).
        deform_modulated, deform_num_groups: as detectron2's deformable blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        split_channels: int,
        scales: int = 4,
        stride: int = 1,
        hierarchical: bool = True,
        norm="BN",
        deform: bool = False,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        if scales < 2:
            raise ValueError(f"Res2Net needs scales >= 2 (1 is a ResNet), got {scales}")
        self.scales, self.split_channels, self.hierarchical = scales, split_channels, hierarchical
        width = split_channels * scales
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels)
            )
        self.conv1 = Conv2d(in_channels, width, 1, bias=False, norm=get_norm(norm, width))
        self.convs = nn.ModuleList()
        self.convs_offset = nn.ModuleList() if deform else None
        for _ in range(scales - 1):
            norm_layer = get_norm(norm, split_channels)
            if deform:
                conv, offset_conv = deformable_3x3(
                    split_channels, stride, 1, 1, deform_modulated, deform_num_groups, norm_layer
                )
                self.convs_offset.append(offset_conv)
            else:
                conv = Conv2d(
                    split_channels, split_channels, 3, stride=stride, padding=1, bias=False,
                    norm=norm_layer,
                )  # fmt: skip
            self.convs.append(conv)
        self.conv3 = Conv2d(width, out_channels, 1, bias=False, norm=get_norm(norm, out_channels))
        for conv in [self.conv1, self.conv3, self.shortcut, *self.convs]:
            if conv is not None:
                weight_init.c2_msra_fill(conv)

    def _split_conv(self, i: int, x: Tensor) -> Tensor:
        if self.convs_offset is None:
            return F.relu_(self.convs[i](x))
        return F.relu_(deform_forward(self.convs[i], self.convs_offset[i], x))

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        splits = torch.split(F.relu_(self.conv1(x)), self.split_channels, dim=1)
        outs = [self._split_conv(0, splits[0].contiguous())]
        for i in range(1, self.scales - 1):
            sp = outs[-1] + splits[i] if self.hierarchical else splits[i]
            outs.append(self._split_conv(i, sp.contiguous()))
        last = splits[-1]
        if self.stride != 1:
            last = F.avg_pool2d(last, kernel_size=3, stride=self.stride, padding=1)
        out = self.conv3(torch.cat(outs + [last], dim=1))
        shortcut = x
        if self.shortcut is not None:
            if self.stride != 1:
                shortcut = F.avg_pool2d(
                    x, self.stride, self.stride, ceil_mode=True, count_include_pad=False
                )
            shortcut = self.shortcut(shortcut)
        return F.relu_(out + shortcut)


def make_res2net_stages(
    depth: int = 101,
    scales: int = 4,
    base_width: int = 26,
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
    norm="BN",
):
    """
    Stages res2..res5 of a Res2Net (``26w x 4s``: ``base_width=26``,
    ``scales=4``): ``floor(64 * 2^i * base_width / 64)`` channels per group in
    stage i, outputs 256 * 2^i, stride 2 on the first block of every stage but
    res2; deformable split convs in the stages flagged in ``deform_on_per_stage``.
    """
    num_blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}.get(depth)
    if num_blocks is None:
        raise ValueError(f"Res2Net depth must be 50, 101 or 152, got {depth}")
    if len(deform_on_per_stage) != 4:
        raise ValueError(
            f"deform_on_per_stage needs 4 values (res2..res5), got {deform_on_per_stage}"
        )
    stages, in_channels = [], 64
    for i, (n, deform) in enumerate(zip(num_blocks, deform_on_per_stage)):
        out_channels = 256 * 2**i
        stages.append(
            ResNet.make_stage(
                Bottle2neckBlock,
                n,
                in_channels=in_channels,
                out_channels=out_channels,
                stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
                hierarchical_per_block=[False] + [True] * (n - 1),
                split_channels=int(math.floor(64 * 2**i * base_width / 64)),
                scales=scales,
                norm=norm,
                deform=bool(deform),
                deform_modulated=deform_modulated,
                deform_num_groups=deform_num_groups,
            )
        )
        in_channels = out_channels
    return stages
