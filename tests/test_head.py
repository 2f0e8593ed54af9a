import math

import pytest
import torch

from detectron2.layers import ShapeSpec

from gfl_d2.modeling.head import GFLHead


def make_head(**kw):
    args = dict(input_shape=[ShapeSpec(channels=32)] * 5, num_classes=7, conv_dims=[32, 32], norm="GN", reg_max=16)
    args.update(kw)
    torch.manual_seed(0)
    return GFLHead(**args)


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (200, 136)])
def test_output_shapes(size):
    head = make_head()
    h, w = size
    feats = [torch.randn(2, 32, math.ceil(h / s), math.ceil(w / s)) for s in (8, 16, 32, 64, 128)]
    cls, box = head(feats)
    assert len(cls) == len(box) == 5
    for f, c, b in zip(feats, cls, box):
        assert c.shape == (2, 7, *f.shape[2:])
        assert b.shape == (2, 4 * 17, *f.shape[2:])


def test_reg_max_sets_channels():
    head = make_head(reg_max=7)
    _, box = head([torch.randn(1, 32, 4, 4)] * 5)
    assert box[0].shape[1] == 32


def test_initialisation():
    head = make_head(prior_prob=0.01)
    torch.testing.assert_close(head.cls_score.bias, torch.full((7,), -math.log(99.0)))
    assert torch.all(head.bbox_pred.bias == 0)
    for conv in [head.cls_score, head.bbox_pred, head.cls_subnet[0], head.bbox_subnet[0]]:
        assert abs(conv.weight.std().item() - 0.01) < 0.002
    # tower convs followed by GroupNorm carry no bias, like the released models
    assert head.cls_subnet[0].bias is None
    assert isinstance(head.cls_subnet[1], torch.nn.GroupNorm) and head.cls_subnet[1].num_groups == 32
    assert len(head.scales) == 5 and all(s.scale.item() == 1.0 for s in head.scales)


def test_zero_input_gives_the_prior():
    head = make_head()
    cls, _ = head([torch.zeros(1, 32, 3, 3)] * 5)
    torch.testing.assert_close(cls[0].sigmoid(), torch.full_like(cls[0], 0.01), rtol=1e-4, atol=1e-6)


def test_per_level_scales_multiply_only_their_level():
    head = make_head()
    feats = [torch.randn(1, 32, 4, 4) for _ in range(5)]
    _, before = head(feats)
    with torch.no_grad():
        head.scales[2].scale.fill_(3.0)
    cls_after, after = head(feats)
    for lvl in range(5):
        factor = 3.0 if lvl == 2 else 1.0
        torch.testing.assert_close(after[lvl], before[lvl] * factor)


def test_towers_are_shared_across_levels():
    head = make_head()
    x = torch.randn(1, 32, 5, 5)
    cls, box = head([x] * 5)
    for lvl in range(1, 5):
        torch.testing.assert_close(cls[lvl], cls[0])
        torch.testing.assert_close(box[lvl], box[0])


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="same channels"):
        make_head(input_shape=[ShapeSpec(channels=32), ShapeSpec(channels=64)])
    with pytest.raises(ValueError, match="GN"):
        make_head(norm="BN")
    head = make_head()
    with pytest.raises(ValueError, match="5 levels"):
        head([torch.randn(1, 32, 4, 4)] * 3)
