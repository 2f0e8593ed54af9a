"""
gfl-d2's NanoDet-Plus parts against NanoDet's own model code (RangiLyu/nanodet),
built from its released configs: ShuffleNetV2 + GhostPAN with NanoDet's
weights renamed by gfl_d2.convert_nanodet give NanoDet's features.

Skipped unless ``NANODET_SRC`` points to a NanoDet source tree
(tools/gfl_studies/nanodet_runtime.py; never a dependency of gfl-d2).
"""

import pytest
import torch

from gfl_d2.convert_nanodet import rename_nanodet_key
from gfl_d2.modeling.ghost_pan import GhostPAN
from gfl_d2.modeling.shufflenet import ShuffleNetV2
from gfl_studies.nanodet_runtime import CONFIGS, build_nanodet, nanodet_available

pytestmark = pytest.mark.skipif(
    not nanodet_available(), reason="NANODET_SRC (a NanoDet source tree) is not set"
)


def off_default_statistics(model, seed=0):
    """BatchNorm statistics and biases off their initial values, so that every one counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shufflenet_and_ghost_pan_give_nanodets_features(name):
    config, size, channels = CONFIGS[name]
    nanodet, _ = build_nanodet(config)
    nanodet.eval()
    off_default_statistics(nanodet)
    state = {
        rename_nanodet_key(k): v
        for k, v in nanodet.state_dict().items()
        if k.startswith(("backbone.", "fpn.")) and not k.endswith("num_batches_tracked")
    }
    ours = GhostPAN(
        ShuffleNetV2(size, activation="LeakyReLU"), ["stage2", "stage3", "stage4"], channels
    ).eval()
    expected = {
        "backbone." + k: v.shape
        for k, v in ours.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert {k: v.shape for k, v in state.items()} == expected
    torch.nn.Module.load_state_dict(torch.nn.ModuleDict({"backbone": ours}), state, strict=False)
    x = torch.randn(2, 3, 320, 416, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = nanodet.fpn(nanodet.backbone(x)), ours(x)
    assert list(got) == ["p3", "p4", "p5", "p6"]
    for w, (level, g) in zip(want, got.items()):
        # the same operations in the same order: equal to float32 rounding of values ~1
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
