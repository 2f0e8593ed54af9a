"""ResNet-FPN with P6/P7 computed from P5, as in the released GFL models."""

from typing import Sequence

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import (
    BACKBONE_REGISTRY,
    FPN,
    BasicStem,
    ResNet,
    build_resnet_backbone,
)
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from .deform_conv import DeformBottleneckBlock
from .res2net import DeepStem, make_res2net_stages

__all__ = [
    "LastLevelP6P7FromP5",
    "make_basic_stages",
    "make_resnext_stages",
    "make_bottleneck_stages",
    "build_gfl_resnet_fpn_backbone",
    "build_gfl_res2net_fpn_backbone",
]


class LastLevelP6P7FromP5(LastLevelP6P7):
    """
    detectron2's ``LastLevelP6P7`` applies a ReLU between P6 and P7. The
    released GFL models (FPN extra convs "on output", no ReLU in between) do
    not; ``relu_before_p7=False`` reproduces them exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_feature: str = "p5",
        relu_before_p7: bool = False,
    ):
        super().__init__(in_channels, out_channels, in_feature=in_feature)
        self.relu_before_p7 = relu_before_p7

    def forward(self, x):
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p6, p7]


def make_resnext_stages(depth: int = 101, num_groups: int = 32, width_per_group: int = 4, **kwargs):
    """
    Stages of a ResNeXt (``ResNet.make_default_stages`` fixes the bottleneck
    width to a quarter of the output): res2's grouped 3x3 conv has
    ``num_groups * width_per_group`` channels, doubling every stage.
    ``kwargs`` as :func:`make_bottleneck_stages`.
    """
    return make_bottleneck_stages(depth, num_groups, width_per_group, **kwargs)


def make_bottleneck_stages(
    depth: int = 50,
    num_groups: int = 1,
    width_per_group: int = 64,
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
    **kwargs,
):
    """
    Stages res2..res5 of a bottleneck ResNet (``num_groups=1``,
    ``width_per_group=64``) or ResNeXt, with detectron2's deformable switches:
    the stages flagged in ``deform_on_per_stage`` use
    :class:`~gfl_d2.modeling.deform_conv.DeformBottleneckBlock` (v1, or
    modulated with ``deform_modulated``; ``deform_num_groups`` offset groups),
    as ``MODEL.RESNETS.DEFORM_*`` do in detectron2's yacs configs.
    ``kwargs`` go to ``ResNet.make_stage`` (``norm``, ``stride_in_1x1``, ...).
    """
    if len(deform_on_per_stage) != 4:
        raise ValueError(
            f"deform_on_per_stage needs 4 values (res2..res5), got {deform_on_per_stage}"
        )
    num_blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    bottleneck = num_groups * width_per_group
    deform = dict(deform_modulated=deform_modulated, deform_num_groups=deform_num_groups)
    stage_kwargs = [
        dict(
            block_class=DeformBottleneckBlock if on else BottleneckBlock,
            bottleneck_channels=bottleneck * 2**i,
            **(deform if on else {}),
        )
        for i, on in enumerate(deform_on_per_stage)
    ]
    return _stages(
        num_blocks,
        64,
        [256 * 2**i for i in range(4)],
        stage_kwargs,
        num_groups=num_groups,
        **kwargs,
    )


def make_basic_stages(depth: int = 18, width: int = 64, **kwargs):
    """
    Stages of a ResNet-18/34 whose res2 has ``width`` channels, doubling every
    stage (``ResNet.make_default_stages`` fixes 64): a narrower network for
    small images on a CPU. ``kwargs`` go to ``ResNet.make_stage`` (``norm``, ...).
    """
    num_blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}[depth]
    stage_kwargs = [dict(block_class=BasicBlock)] * 4
    return _stages(num_blocks, width, [width * 2**i for i in range(4)], stage_kwargs, **kwargs)


def _stages(num_blocks, in_channels, out_channels, stage_kwargs, **kwargs):
    """
    ``ResNet.make_stage`` for res2..res5: ``num_blocks[i]`` blocks of
    ``out_channels[i]`` channels, stride 2 on the first block of every stage
    but res2; ``stage_kwargs[i]`` holds the arguments of stage i alone (the block class).
    """
    stages = []
    for i, n in enumerate(num_blocks):
        stages.append(
            ResNet.make_stage(
                num_blocks=n,
                stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
                in_channels=in_channels,
                out_channels=out_channels[i],
                **stage_kwargs[i],
                **kwargs,
            )
        )
        in_channels = out_channels[i]
    return stages


def _build_deformable_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """
    detectron2's ResNet of a yacs config whose ``MODEL.RESNETS.DEFORM_ON_PER_STAGE``
    sets deformable stages, with them on torchvision's op (detectron2's
    ``build_resnet_backbone`` builds its compiled layers).
    """
    r = cfg.MODEL.RESNETS
    if r.DEPTH < 50 or r.RES5_DILATION != 1:
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE needs a bottleneck ResNet (DEPTH >= 50) with "
            f"RES5_DILATION 1; got DEPTH {r.DEPTH}, RES5_DILATION {r.RES5_DILATION}"
        )
    stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    stages = make_bottleneck_stages(
        r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.DEFORM_ON_PER_STAGE, r.DEFORM_MODULATED,
        r.DEFORM_NUM_GROUPS, norm=r.NORM, stride_in_1x1=r.STRIDE_IN_1X1,
    )  # fmt: skip
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_gfl_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    yacs builder: ResNet + FPN (P3-P5) + P6/P7 from P5's output; deformable
    stages (``MODEL.RESNETS.DEFORM_*``) without compiled ops.
    """
    if any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        bottom_up = _build_deformable_resnet(cfg, input_shape)
    else:
        bottom_up = build_resnet_backbone(cfg, input_shape)
    return _gfl_fpn(cfg, bottom_up)


@BACKBONE_REGISTRY.register()
def build_gfl_res2net_fpn_backbone(cfg, input_shape: ShapeSpec):
    """
    yacs builder: Res2Net-v1d (``MODEL.RES2NET.SCALES``, ``BASE_WIDTH``; depth,
    norm, output features and deformable stages from ``MODEL.RESNETS``) + FPN
    (P3-P5) + P6/P7 from P5's output.
    """
    r = cfg.MODEL.RESNETS
    stem = DeepStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)
    stages = make_res2net_stages(
        r.DEPTH, cfg.MODEL.RES2NET.SCALES, cfg.MODEL.RES2NET.BASE_WIDTH, r.DEFORM_ON_PER_STAGE,
        r.DEFORM_MODULATED, r.DEFORM_NUM_GROUPS, norm=r.NORM,
    )  # fmt: skip
    bottom_up = ResNet(
        stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )
    return _gfl_fpn(cfg, bottom_up)


def _gfl_fpn(cfg, bottom_up):
    """GFL's FPN on ``bottom_up``: ``MODEL.FPN`` levels and P6/P7 from P5's output."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7FromP5(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
