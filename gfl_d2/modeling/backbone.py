"""ResNet-FPN with P6/P7 computed from P5, as in the released GFL models."""

import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, ResNet, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

__all__ = [
    "LastLevelP6P7FromP5",
    "make_basic_stages",
    "make_resnext_stages",
    "build_gfl_resnet_fpn_backbone",
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
    ``kwargs`` go to ``ResNet.make_stage`` (``norm``, ``stride_in_1x1``, ...).
    """
    num_blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
    bottleneck = num_groups * width_per_group
    return _stages(
        BottleneckBlock,
        num_blocks,
        64,
        [256 * 2**i for i in range(4)],
        per_stage=dict(bottleneck_channels=[bottleneck * 2**i for i in range(4)]),
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
    return _stages(BasicBlock, num_blocks, width, [width * 2**i for i in range(4)], **kwargs)


def _stages(block_class, num_blocks, in_channels, out_channels, per_stage=None, **kwargs):
    """
    ``ResNet.make_stage`` for res2..res5: ``num_blocks[i]`` blocks of
    ``out_channels[i]`` channels, stride 2 on the first block of every stage
    but res2; ``per_stage`` holds the arguments that differ by stage (lists).
    """
    stages = []
    for i, n in enumerate(num_blocks):
        stages.append(
            ResNet.make_stage(
                block_class=block_class,
                num_blocks=n,
                stride_per_block=[1 if i == 0 else 2] + [1] * (n - 1),
                in_channels=in_channels,
                out_channels=out_channels[i],
                **{k: v[i] for k, v in (per_stage or {}).items()},
                **kwargs,
            )
        )
        in_channels = out_channels[i]
    return stages


@BACKBONE_REGISTRY.register()
def build_gfl_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """yacs builder: ResNet + FPN (P3-P5) + P6/P7 from P5's output."""
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7FromP5(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
