"""
NanoDet-Plus's detection head as a GFL head: per level (not shared), a tower
of depthwise-separable convs and one 1x1 conv whose output holds the C joint
class-IoU logits and then the 4 (n + 1) logits of the edge distributions; no
per-level scale. :class:`~gfl_d2.modeling.GFL` decodes and trains it as it
does :class:`~gfl_d2.modeling.GFLHead` (its ``box2box_transform``, quality
"joint").
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.layers import ShapeSpec
from torch import Tensor, nn

from .ghost_pan import DepthwiseSeparableConv

__all__ = ["NanoDetPlusHead"]


class NanoDetPlusHead(nn.Module):
    """
    Args:
        input_shape: one ShapeSpec per level.
        num_classes: C.
        box2box_transform: what the box outputs are (NanoDet-Plus:
            ``DistributionBox2BoxTransform(reg_max=7)``).
        feat_channels: width of the towers (96 in NanoDet-Plus-m, 128 in -1.5x).
        num_convs: depthwise-separable convs per tower (2).
        kernel_size: of their depthwise convs (5).
        norm, activation: as :class:`~gfl_d2.modeling.ShuffleNetV2`'s.
        prior_prob: initial foreground probability of every class.
    """

    # a layer whose output channels hold the box outputs (after the classes): its shape fixes n
    box_layer = "outputs.0"

    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        box2box_transform,
        feat_channels: int = 96,
        num_convs: int = 2,
        kernel_size: int = 5,
        norm="BN",
        activation: str = "LeakyReLU",
        prior_prob: float = 0.01,
    ):
        super().__init__()
        self.num_classes, self.box2box_transform, self.quality = (
            num_classes,
            box2box_transform,
            "joint",
        )
        outputs = num_classes + box2box_transform.num_outputs
        self.towers = nn.ModuleList()
        self.outputs = nn.ModuleList()
        for shape in input_shape:
            widths = [shape.channels] + [feat_channels] * num_convs
            self.towers.append(
                nn.Sequential(
                    *[DepthwiseSeparableConv(a, b, kernel_size, 1, norm, activation)
                      for a, b in zip(widths, widths[1:])]
                )
            )  # fmt: skip
            self.outputs.append(nn.Conv2d(widths[-1], outputs, 1))
        for conv in self.outputs:
            nn.init.normal_(conv.weight, std=0.01)
            # NanoDet's: every output channel starts at the classes' prior (a shift of all
            # of an edge's bins leaves its distribution unchanged)
            nn.init.constant_(conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def fit_class_rows(
        self, state: Dict[str, Tensor], prefix: str, checkpoint_classes: Optional[int] = None
    ) -> Dict[str, Tuple[int, int]]:
        """
        Fit, in ``state`` (a checkpoint's tensors, this head's under ``prefix``),
        the output convolutions of a head trained with another number of classes
        to this head: the classes and the box distributions share them, so their
        box rows (the last 4 (n + 1)) are kept and their class rows become this
        head's own (its initialisation), as a class change keeps the box
        regression of a head with a separate box layer.

        Args:
            checkpoint_classes: the checkpoint's class count, where it says;
                else its rows less this head's box outputs (the same n assumed).

        Returns:
            key -> (the checkpoint's classes, this head's) of each tensor fitted.
            A tensor whose box rows cannot be this head's (another n) is left
            as it is: its shape differs and the loading leaves it at its
            initialisation.
        """
        box_rows, own = self.box2box_transform.num_outputs, self.state_dict()
        fitted = {}
        for i in range(len(self.outputs)):
            for name in (f"outputs.{i}.weight", f"outputs.{i}.bias"):
                key, mine = prefix + name, own[name]
                value = state.get(key)
                if value is None or value.shape == mine.shape or value.shape[1:] != mine.shape[1:]:
                    continue
                classes = checkpoint_classes or value.shape[0] - box_rows
                if classes < 1 or value.shape[0] - classes != box_rows:
                    continue
                rows = [mine[: self.num_classes].to(value), value[classes:]]
                state[key] = torch.cat(rows)
                fitted[key] = (classes, self.num_classes)
        return fitted

    @property
    def output_channels(self) -> List[int]:
        """Channels of the outputs, in order: class logits, box outputs."""
        return [self.num_classes, self.box2box_transform.num_outputs]

    def forward(self, features: List[Tensor]) -> List[List[Tensor]]:
        """
        Args:
            features: one map per level, fine to coarse, (N, Cin, Hi, Wi).

        Returns:
            [cls_logits, box_regs]: per level, (N, C, Hi, Wi) and (N, 4 (n + 1), Hi, Wi).
        """
        if len(features) != len(self.towers):
            raise ValueError(
                f"NanoDetPlusHead built for {len(self.towers)} levels, got {len(features)}"
            )
        cls_logits, box_regs = [], []
        for feature, tower, output in zip(features, self.towers, self.outputs):
            out = output(tower(feature))
            cls_logits.append(out[:, : self.num_classes])
            box_regs.append(out[:, self.num_classes :])
        return [cls_logits, box_regs]
