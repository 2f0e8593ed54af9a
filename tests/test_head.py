import math

import pytest
import torch
from detectron2.layers import ShapeSpec

from gfl_d2.modeling import (
    DiracBox2BoxTransform,
    DistributionBox2BoxTransform,
    DistributionGuidedQualityPredictor,
    distribution_statistics,
)
from gfl_d2.modeling.head import GFLHead

from .gfocalv2_reference import authors_model, load_authors_reference


def make_head(**kw):
    args = dict(
        input_shape=[ShapeSpec(channels=32)] * 5,
        num_classes=7,
        conv_dims=[32, 32],
        norm="GN",
        box2box_transform=DistributionBox2BoxTransform(reg_max=16),
    )
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
    head = make_head(box2box_transform=DistributionBox2BoxTransform(reg_max=7))
    _, box = head([torch.randn(1, 32, 4, 4)] * 5)
    assert box[0].shape[1] == 32
    assert head.output_channels == [7, 32]


@pytest.mark.parametrize(
    "transform, quality, channels",
    [
        (DistributionBox2BoxTransform(16), "joint", [7, 68]),
        (DistributionBox2BoxTransform(16), "dgqp", [7, 68, 1]),
        (DistributionBox2BoxTransform(8, 0.5), "centerness", [7, 36, 1]),
        (DiracBox2BoxTransform(8.0), "iou", [7, 4, 1]),
        (DiracBox2BoxTransform(8.0), "none", [7, 4]),
    ],
)
def test_the_head_is_the_one_source_of_the_output_layout(transform, quality, channels):
    head = make_head(box2box_transform=transform, quality=quality)
    assert head.box2box_transform == transform and head.quality == quality
    assert head.output_channels == channels
    outputs = head([torch.randn(1, 32, 3, 3)] * 5)
    assert [o[0].shape[1] for o in outputs] == channels
    # the layout has one home: the transform (no copies of n or the box channels on the head)
    for gone in ("reg_max", "box_channels", "box_representation"):
        assert not hasattr(head, gone)


def test_initialisation():
    head = make_head(prior_prob=0.01)
    torch.testing.assert_close(head.cls_score.bias, torch.full((7,), -math.log(99.0)))
    assert torch.all(head.bbox_pred.bias == 0)
    for conv in [head.cls_score, head.bbox_pred, head.cls_subnet[0], head.bbox_subnet[0]]:
        assert abs(conv.weight.std().item() - 0.01) < 0.002
    # tower convs followed by GroupNorm carry no bias, like the released models
    assert head.cls_subnet[0].bias is None
    assert (
        isinstance(head.cls_subnet[1], torch.nn.GroupNorm) and head.cls_subnet[1].num_groups == 32
    )
    assert len(head.scales) == 5 and all(s.scale.item() == 1.0 for s in head.scales)


def test_zero_input_gives_the_prior():
    head = make_head()
    cls, _ = head([torch.zeros(1, 32, 3, 3)] * 5)
    torch.testing.assert_close(
        cls[0].sigmoid(), torch.full_like(cls[0], 0.01), rtol=1e-4, atol=1e-6
    )


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
    with pytest.raises(ValueError, match="quality must be one of"):
        make_head(quality="joint-ish")
    with pytest.raises(TypeError, match="reg_max"):
        make_head(reg_max=16)  # the bins are the transform's


def test_dgqp_needs_distributions_with_enough_bins():
    with pytest.raises(ValueError, match="it needs a DistributionBox2BoxTransform"):
        make_head(box2box_transform=DiracBox2BoxTransform(), quality="dgqp")
    # the predictor reads the top-k bins of each edge: n + 1 = 3 bins cannot give 4
    with pytest.raises(ValueError, match="top 4 of each edge's n \\+ 1 bins"):
        make_head(box2box_transform=DistributionBox2BoxTransform(reg_max=2), quality="dgqp")
    make_head(
        box2box_transform=DistributionBox2BoxTransform(reg_max=2), quality="dgqp", dgqp_topk=3
    )


# ------------------------------------------------ GFL V2's distribution-guided quality predictor
def test_statistics_are_each_edges_topk_then_their_mean():
    probs = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.15, 0.05],
            [0.2] * 5,
            [0.0, 0.0, 0.0, 0.0, 1.0],
            [0.3, 0.3, 0.2, 0.1, 0.1],
        ]
    )
    stats = distribution_statistics(probs[None], topk=4)  # (1, 4 edges, 5)
    expected = [[0.5, 0.2, 0.15, 0.1], [0.2] * 4, [1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.2, 0.1]]
    expected = torch.tensor([row + [sum(row) / 4] for row in expected])
    torch.testing.assert_close(stats[0], expected)
    assert distribution_statistics(probs, topk=2, add_mean=False).shape == (4, 2)
    with pytest.raises(ValueError, match="topk=6 is larger than the 5 bins"):
        distribution_statistics(probs, topk=6)


def test_predictor_reads_the_distributions_of_the_head_layout():
    """
    (N, 4(n+1), H, W) logits per level: the 20 statistics in the order
    (l, t, r, b) x (top-4, mean), then the 1x1 convs.
    """
    predictor = DistributionGuidedQualityPredictor(topk=4, channels=64)
    assert predictor.in_channels == 20
    for conv in (predictor.layers[0], predictor.layers[2]):
        assert torch.all(conv.bias == 0) and 0.005 < conv.weight.std() < 0.02  # normal(0, 0.01)
    with torch.no_grad():
        predictor.layers[2].weight.normal_()  # a quality that varies
    levels = [torch.randn(2, 4 * 17, 3, 5), torch.randn(2, 4 * 17, 2, 1)]
    quality = predictor(levels)
    assert [tuple(q.shape) for q in quality] == [(2, 1, 3, 5), (2, 1, 2, 1)]
    for logits, q in zip(levels, quality):
        n, _, h, w = logits.shape
        probs = logits.reshape(n, 4, 17, h, w).softmax(dim=2)
        top = probs.sort(dim=2, descending=True).values[:, :, :4]
        stats = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2).reshape(
            n, 20, h, w
        )  # conv layout
        torch.testing.assert_close(q, predictor.layers(stats), rtol=1e-5, atol=1e-6)
    stats = predictor.statistics(levels)
    assert stats.shape == (2, 15 + 2, 20)
    with pytest.raises(ValueError, match="not 4 \\* \\(n \\+ 1\\)"):
        predictor([torch.randn(1, 66, 2, 2)])
    # an untrained predictor says 0.5 everywhere: the fused score starts at half the prior
    fresh = DistributionGuidedQualityPredictor()(levels)
    assert all(torch.allclose(q.sigmoid(), torch.full_like(q, 0.5), atol=1e-3) for q in fresh)


@pytest.fixture(scope="module")
def authors():
    return load_authors_reference()


def test_fused_score_and_box_outputs_equal_the_authors_head(authors):
    model = authors_model(authors)
    with torch.no_grad():
        cls, box, quality = model.head(authors["feats"])
    for c, q, ref in zip(cls, quality, authors["cls_scores"]):
        torch.testing.assert_close(c.sigmoid() * q.sigmoid(), ref, rtol=1e-6, atol=1e-7)
    for b, ref in zip(box, authors["bbox_preds"]):
        torch.testing.assert_close(b, ref, rtol=1e-6, atol=1e-7)
