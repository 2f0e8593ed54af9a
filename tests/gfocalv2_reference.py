"""
GFL V2 on the reference numbers of the authors' own code (implus/GFocalV2, run
by tests/fixtures/make_gfocalv2_fixture.py): a small ``GFocalHead``'s weights,
inputs, outputs, losses and a gradient (gfocalv2_head_reference.pt), and
gfl-d2's model carrying the same weights, for the head and loss parity tests.
"""

import os

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from torch import nn

from gfl_d2 import GFL
from gfl_d2.convert import _rename
from gfl_d2.modeling import ATSSMatcher, DistributionBox2BoxTransform, GFLHead

from .mmdet_gfl_reference import FIXTURES

REFERENCE = os.path.join(FIXTURES, "gfocalv2_head_reference.pt")
STRIDES = [8, 16, 32, 64, 128]


def load_authors_reference():
    return torch.load(REFERENCE, weights_only=True)


class FixedFeatures(Backbone):
    """A backbone returning given FPN maps (strides 8-128): the head sees the reference's inputs."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, x):
        return {f"p{i + 3}": f for i, f in enumerate(self.feats)}

    def output_shape(self):
        return {
            f"p{i + 3}": ShapeSpec(channels=self.feats[0].shape[1], stride=STRIDES[i])
            for i in range(5)
        }


def gfl_anchor_generator(strides=STRIDES, anchor_scale=8.0):
    """GFL's anchors: one ``anchor_scale x stride`` square per location (ATSS's base scale)."""
    return DefaultAnchorGenerator(
        sizes=[[anchor_scale * s] for s in strides],
        aspect_ratios=[1.0],
        strides=list(strides),
        offset=0.0,
    )


def authors_model(ref):
    """
    gfl-d2's V2 on the authors' head weights, mapped by the converter's key rules.
    Their head has a background column (use_sigmoid=False): kept here as a 4th
    class that no ground truth has, so that the whole head and loss compare.
    """
    channels = ref["config"]["cls_out_channels"]
    head = GFLHead(
        input_shape=[ShapeSpec(channels=8)] * 5,
        num_classes=channels,
        conv_dims=[8],
        norm=lambda c: nn.GroupNorm(4, c),
        box2box_transform=DistributionBox2BoxTransform(reg_max=16),
        quality="dgqp",
    )
    state = {
        _rename("bbox_head." + k)[len("head.") :]: v
        for k, v in ref["state_dict"].items()
        if k != "integral.project"
    }
    head.load_state_dict(state, strict=True)
    return GFL(
        backbone=FixedFeatures(ref["feats"]),
        head=head,
        head_in_features=[f"p{i}" for i in range(3, 8)],
        anchor_generator=gfl_anchor_generator(STRIDES),
        anchor_matcher=ATSSMatcher(topk=9),
        num_classes=channels,
        pixel_mean=[0.0] * 3,
        pixel_std=[1.0] * 3,
    )
