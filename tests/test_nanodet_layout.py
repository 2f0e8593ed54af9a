"""
NanoDet-Plus's state dicts as NanoDet's own code builds them (every key and
shape, recorded in tests/fixtures/nanodet_state_dicts.json by
make_nanodet_fixture.py): the backbone's and the neck's keys rename to gfl-d2's
ShuffleNetV2 + GhostPAN one to one, with the same shapes. Their outputs equal
NanoDet's in tests/test_nanodet_e2e.py (needs a NanoDet source tree).
"""

import json
import os

import pytest
import torch

from gfl_d2.convert_backbone import ConversionError
from gfl_d2.convert_nanodet import rename_nanodet_key
from gfl_d2.modeling.ghost_pan import GhostPAN
from gfl_d2.modeling.shufflenet import ShuffleNetV2

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "nanodet_state_dicts.json")
# the fixture's models: gfl-d2's backbone size and GhostPAN width
MODELS = {"m 320": ("1.0x", 96), "m 416": ("1.0x", 96), "m-1.5x 320": ("1.5x", 128)}
MODELS["m-1.5x 416"] = ("1.5x", 128)


def nanodet_layout(name):
    with open(FIXTURE) as f:
        return {k: tuple(shape) for k, shape, _ in json.load(f)["models"][name]["state_dict"]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_backbone_and_neck_keys_rename_one_to_one_with_their_shapes(name):
    size, channels = MODELS[name]
    layout = nanodet_layout(name)
    ours = GhostPAN(ShuffleNetV2(size), ["stage2", "stage3", "stage4"], channels)
    expected = {
        "backbone." + k: tuple(v.shape)
        for k, v in ours.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    renamed = {
        rename_nanodet_key(k): shape
        for k, shape in layout.items()
        if k.startswith(("backbone.", "fpn.")) and not k.endswith("num_batches_tracked")
    }
    assert renamed == expected
    assert sum(torch.Size(s).numel() for s in renamed.values()) > 1e5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_head_keys_rename_one_to_one_with_their_shapes(name):
    from detectron2.layers import ShapeSpec

    from gfl_d2.modeling import DistributionBox2BoxTransform
    from gfl_d2.modeling.nanodet_head import NanoDetPlusHead

    _, channels = MODELS[name]
    layout = nanodet_layout(name)
    head = NanoDetPlusHead(
        input_shape=[ShapeSpec(channels=channels)] * 4,
        num_classes=80,
        box2box_transform=DistributionBox2BoxTransform(reg_max=7),
        feat_channels=channels,
    )
    expected = {
        "head." + k: tuple(v.shape)
        for k, v in head.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    renamed = {
        rename_nanodet_key(k): shape
        for k, shape in layout.items()
        if k.startswith("head.")
        and not k.endswith(("num_batches_tracked", "distribution_project.project"))
    }
    assert renamed == expected
    # the training-only auxiliary head and its neck copy are the rest
    rest = {k.split(".")[0] for k in layout if not k.startswith(("backbone.", "fpn.", "head."))}
    assert rest == {"aux_fpn", "aux_head"}


def test_keys_without_counterpart_are_named():
    with pytest.raises(ConversionError, match="'fpn.upsample.weight'"):
        rename_nanodet_key("fpn.upsample.weight")
    with pytest.raises(ConversionError, match="no counterpart"):
        rename_nanodet_key("fpn.top_down_blocks.0.blocks.0.ghost1.primary_conv.2.weight")
