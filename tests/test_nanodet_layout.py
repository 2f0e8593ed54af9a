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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_auxiliary_keys_rename_one_to_one_with_their_shapes(name):
    """The training-only neck copy and head (kept by the converter, for fine-tuning)."""
    from detectron2.config import LazyConfig, instantiate

    from gfl_d2.convert_nanodet import rename_nanodet_aux_key

    from .repo import ROOT

    config = "nanodet_plus_m_1_5x_320.py" if "1.5x" in name else "nanodet_plus_m_320.py"
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", "NanoDet", config))
    model = instantiate(cfg.model)
    expected = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith(("aux_neck.", "aux_head.")) and not k.endswith("num_batches_tracked")
    }
    renamed = {
        rename_nanodet_aux_key(k): shape
        for k, shape in nanodet_layout(name).items()
        if k.startswith(("aux_fpn.", "aux_head.")) and not k.endswith("num_batches_tracked")
    }
    assert renamed == expected


def test_keys_without_counterpart_are_named():
    with pytest.raises(ConversionError, match="'fpn.upsample.weight'"):
        rename_nanodet_key("fpn.upsample.weight")
    with pytest.raises(ConversionError, match="no counterpart"):
        rename_nanodet_key("fpn.top_down_blocks.0.blocks.0.ghost1.primary_conv.2.weight")


def nanodet_state_dict(name, seed=0):
    """Random tensors of exactly the layout NanoDet's code saves (bins 0..7 in the buffer)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    with open(FIXTURE) as f:
        entries = json.load(f)["models"][name]["state_dict"]
    for key, shape, dtype in entries:
        if key.endswith("distribution_project.project"):
            state[key] = torch.arange(shape[0], dtype=getattr(torch, dtype))
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


@pytest.mark.parametrize(
    "name, config",
    [("m 416", "nanodet_plus_m_320.py"), ("m-1.5x 320", "nanodet_plus_m_1_5x_320.py")],
)
def test_lightning_checkpoint_converts_its_ema_weights_with_the_tool(tmp_path, name, config):
    """NanoDet's Lightning .ckpt holds model.* and the EMA copy avg_model.*, which NanoDet uses."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    from .repo import ROOT, run_tool

    trained, ema = nanodet_state_dict(name, 0), nanodet_state_dict(name, 1)
    ckpt = {"epoch": 299, "state_dict": {f"model.{k}": v for k, v in trained.items()}}
    ckpt["state_dict"].update({f"avg_model.{k}": v for k, v in ema.items()})
    src, dst = tmp_path / "nanodet-plus.ckpt", tmp_path / "converted.pth"
    torch.save(ckpt, src)
    printed = run_tool(["tools/convert_mmdet_checkpoint.py", src, dst]).stdout
    assert "the EMA weights (avg_model.*)" in printed and "auxiliary head" in printed
    assert f"use it with configs/COCO-Detection/NanoDet/{config}" in printed
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", "NanoDet", config))
    model = instantiate(cfg.model)
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    assert not (
        incompatible.missing_keys or incompatible.unexpected_keys or incompatible.incorrect_shapes
    )
    state = model.state_dict()
    for key in ("backbone.stage2.0.branch2.3.weight", "fpn.reduce_layers.0.conv.weight"):
        assert torch.equal(state[rename_nanodet_key(key)], ema[key])
    # NanoDet's own .pth (save_model_state: the EMA state dict, no prefix) converts alike
    torch.save({"state_dict": ema}, src.with_suffix(".pth"))
    run_tool(["tools/convert_mmdet_checkpoint.py", src.with_suffix(".pth"), dst])
    converted = torch.load(dst, weights_only=True)["model"]
    assert torch.equal(converted["head.outputs.3.bias"], ema["head.gfl_cls.3.bias"])
