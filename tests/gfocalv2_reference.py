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
from torch import nn

from gfl_d2 import GFL
from gfl_d2.convert import _rename
from gfl_d2.modeling import GFLHead

from .mmdet_gfl_reference import FIXTURES

REFERENCE = os.path.join(FIXTURES, "gfocalv2_head_reference.pt")


def load_authors_reference():
    return torch.load(REFERENCE, weights_only=True)


class FixedFeatures(Backbone):
    """A backbone that returns given FPN maps (strides 8-128), so that the head sees the reference's inputs."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, x):
        return {f"p{i + 3}": f for i, f in enumerate(self.feats)}

    def output_shape(self):
        return {
            f"p{i + 3}": ShapeSpec(channels=self.feats[0].shape[1], stride=2 ** (i + 3))
            for i in range(5)
        }


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
        num_classes=channels,
        quality="dgqp",
        pixel_mean=[0.0] * 3,
        pixel_std=[1.0] * 3,
    )
