"""
ShuffleNetV2 as a detectron2 Backbone (gfl_d2.modeling.shufflenet), the
backbone of NanoDet-Plus, against torchvision's ShuffleNetV2 (the real model,
ReLU): its weights renamed by the converter load whole, and the stages'
outputs equal torchvision's.
"""

import pytest
import torch
import torchvision

from gfl_d2.convert_backbone import ConversionError, rename_shufflenet_key
from gfl_d2.modeling.shufflenet import ShuffleNetV2, channel_shuffle, shuffle_order


def torchvision_stages(model, x):
    """torchvision's ShuffleNetV2 up to stage 4: the outputs of stages 2, 3, 4."""
    x = model.maxpool(model.conv1(x))
    outs = []
    for stage in (model.stage2, model.stage3, model.stage4):
        x = stage(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize(
    "size, factory", [("1.0x", "shufflenet_v2_x1_0"), ("1.5x", "shufflenet_v2_x1_5")]
)
def test_torchvisions_weights_load_whole_and_give_its_outputs(size, factory):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, factory)().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BN statistics off their defaults, so that they count
        for name, b in reference.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    state = {
        rename_shufflenet_key(k): v
        for k, v in reference.state_dict().items()
        if not k.startswith(("conv5.", "fc.")) and not k.endswith("num_batches_tracked")
    }
    model = ShuffleNetV2(size, activation="ReLU").eval()
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(state) == set(ours)
    model.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 96, 160, generator=g)
    with torch.no_grad():
        got, want = model(x), torchvision_stages(reference, x)
    for name, w in zip(("stage2", "stage3", "stage4"), want):
        assert got[name].shape == w.shape
        # float32 rounding of ~100-term sums through ~50 layers: a few 1e-6 of values ~1
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=1e-4)
    shapes = model.output_shape()
    assert [(shapes[n].channels, shapes[n].stride) for n in ("stage2", "stage3", "stage4")] == [
        (w.shape[1], s) for w, s in zip(want, (8, 16, 32))
    ]


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_leaky_relu_and_bad_arguments():
    model = ShuffleNetV2("1.0x", out_features=["stage3", "stage4"])
    assert isinstance(model.act, torch.nn.LeakyReLU) and model.act.negative_slope == 0.1
    assert set(model(torch.randn(1, 3, 64, 64))) == {"stage3", "stage4"}
    with pytest.raises(ValueError, match="size must be one of"):
        ShuffleNetV2("3.0x")
    with pytest.raises(ValueError, match="out_features"):
        ShuffleNetV2(out_features=["res5"])
    with pytest.raises(ConversionError, match="no counterpart"):
        rename_shufflenet_key("stage2.0.branch2.2.weight")  # the ReLU has no weight


def test_the_blocks_constant_shuffle_order_is_the_channel_shuffle():
    x = torch.randn(2, 12, 3, 5)
    assert torch.equal(x.index_select(1, shuffle_order(12, 2)), channel_shuffle(x, 2))
    assert not torch.equal(shuffle_order(12, 2), torch.arange(12))
