"""
Res2Net-v1d as detectron2's ResNet (gfl_d2.modeling.res2net): the layout of
MMDetection's Res2Net-101 26w x 4s (every tensor's shape, recorded from the
model MMDetection builds), strides and channels, deformable split convs that
start as plain ones, freezing. Its outputs equal MMDetection's in
tests/test_convert_mmdet_e2e.py (needs MMDetection).
"""

import torch
from detectron2.modeling.backbone import ResNet

from gfl_d2.convert_backbone import rename_backbone_key
from gfl_d2.modeling.res2net import DeepStem, make_res2net_stages

from .mmdet_gfl_reference import mmdet_state_dict_layout


def res2net(depth=101, deform=(False, False, False, False), freeze_at=0, norm="BN"):
    return ResNet(
        DeepStem(3, 64, norm=norm),
        make_res2net_stages(depth, deform_on_per_stage=deform, norm=norm),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=freeze_at,
    )


def test_every_tensor_has_the_shape_of_mmdetections_res2net_101():
    layout = mmdet_state_dict_layout("ImageNet Res2Net-101")
    ours = {k: tuple(v.shape) for k, v in res2net().state_dict().items()}
    expected = {
        rename_backbone_key(k, res2net=True): shape
        for k, shape, _ in layout
        if not k.endswith("num_batches_tracked")
    }
    ours = {k: s for k, s in ours.items() if not k.endswith("num_batches_tracked")}
    assert ours == expected


def test_strides_and_channels():
    model = res2net(depth=50).eval()
    shapes = model.output_shape()
    assert [(shapes[f].channels, shapes[f].stride) for f in ("res2", "res3", "res4", "res5")] == [
        (256, 4),
        (512, 8),
        (1024, 16),
        (2048, 32),
    ]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 67, 99))
    # the stem's and every stage's convs pad and ceil like MMDetection's
    assert [tuple(out[f].shape[2:]) for f in ("res2", "res3", "res4", "res5")] == [
        (17, 25),
        (9, 13),
        (5, 7),
        (3, 4),
    ]


def test_deformable_split_convs_start_as_plain_ones():
    torch.manual_seed(0)
    plain = res2net(depth=50).eval()
    deformable = res2net(depth=50, deform=(False, False, True, True)).eval()
    incompatible = deformable.load_state_dict(plain.state_dict(), strict=False)
    assert not incompatible.unexpected_keys
    assert incompatible.missing_keys and all("convs_offset" in k for k in incompatible.missing_keys)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        a, b = plain(x), deformable(x)
    for f in a:
        torch.testing.assert_close(a[f], b[f], rtol=1e-5, atol=1e-5)
    # the offsets reach the output once they are not zero
    with torch.no_grad():
        for name, p in deformable.named_parameters():
            if "convs_offset" in name and name.endswith("bias"):
                p.fill_(0.7)
        moved = deformable(x)["res5"]
    assert (moved - a["res5"]).abs().max() > 1e-2


def test_freeze_at_freezes_the_deep_stem_and_res2():
    model = res2net(depth=50, freeze_at=2)
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "res2"}
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("res3"))
