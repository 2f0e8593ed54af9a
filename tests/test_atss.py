import math

import torch
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from gfl_d2.modeling.atss import ATSSMatcher

STRIDES = [8, 16, 32]


def level_anchors(image=128):
    gen = DefaultAnchorGenerator(
        sizes=[[8 * s] for s in STRIDES], aspect_ratios=[1.0], strides=STRIDES, offset=0.0
    )
    feats = [torch.zeros(1, 1, math.ceil(image / s), math.ceil(image / s)) for s in STRIDES]
    return [b.tensor for b in gen(feats)]


def _center(b):
    return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def atss_naive(gt, anchors, topk=9):
    """ATSS written out from the spec with plain Python loops (the reference for the tests)."""
    gt = gt.tolist()
    levels = [a.tolist() for a in anchors]
    flat = [a for lvl in levels for a in lvl]
    best = [(-1, -1.0)] * len(flat)
    for g, box in enumerate(gt):
        gc = _center(box)
        cands, start = [], 0
        for lvl in levels:
            d = [math.dist(_center(a), gc) for a in lvl]
            cands += [
                start + i for i in sorted(range(len(lvl)), key=d.__getitem__)[: min(topk, len(lvl))]
            ]
            start += len(lvl)
        ious = [_iou(flat[c], box) for c in cands]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for c, v in zip(cands, ious):
            cx, cy = _center(flat[c])
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if v >= mean + std and inside and v > best[c][1]:
                best[c] = (g, v)
    return torch.tensor([b[0] for b in best])


def random_boxes(n, image=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * image * 0.9
    wh = torch.rand(n, 2, generator=g) * image * 0.5 + 4
    return torch.cat([xy, (xy + wh).clamp(max=image)], dim=1)


def test_matches_naive_reference_on_random_images():
    anchors = level_anchors()
    matcher = ATSSMatcher(topk=9)
    for seed in range(15):
        gt = random_boxes(1 + seed * 2, seed=seed)
        assert torch.equal(matcher(gt, anchors), atss_naive(gt, anchors)), f"seed {seed}"


def test_small_box_only_matches_the_finest_level():
    anchors = level_anchors()
    gt = torch.tensor([[30.3, 38.2, 42.3, 50.2]])
    matched = ATSSMatcher()(gt, anchors)
    pos = (matched >= 0).nonzero()[:, 0]
    assert len(pos) > 0
    assert (pos < len(anchors[0])).all()
    assert torch.equal(matched, atss_naive(gt, anchors))


def test_large_box_does_not_match_the_finest_level():
    anchors = level_anchors()
    gt = torch.tensor([[5.3, 7.1, 121.7, 119.4]])
    matched = ATSSMatcher()(gt, anchors)
    pos = (matched >= 0).nonzero()[:, 0]
    assert len(pos) > 0 and (pos >= len(anchors[0])).all()


def test_overlapping_boxes_compete_by_iou():
    anchors = level_anchors()
    flat = torch.cat(anchors)
    a = [20.2, 18.7, 60.4, 62.1]
    b = [30.6, 26.3, 72.9, 66.8]
    gt = torch.tensor([a, b])
    matcher = ATSSMatcher()
    alone = [set((matcher(gt[i : i + 1], anchors) >= 0).nonzero()[:, 0].tolist()) for i in range(2)]
    shared = alone[0] & alone[1]
    assert shared, "the test boxes must compete for at least one anchor"
    matched = matcher(gt, anchors)
    for r in shared:
        ious = [_iou(flat[r].tolist(), box) for box in (a, b)]
        assert matched[r] == (0 if ious[0] >= ious[1] else 1)
    # anchors claimed by one box only keep it
    for i in range(2):
        for r in alone[i] - shared:
            assert matched[r] == i
    # same IoU on a tie: the lower index wins (swap order -> indices swap)
    twin = torch.tensor([a, a])
    m2 = matcher(twin, anchors)
    assert set(m2[m2 >= 0].tolist()) == {0}


def test_box_without_anchor_centre_gets_no_positive():
    anchors = level_anchors()
    # anchor centres lie on multiples of 8; none is strictly inside this box
    gt = torch.tensor([[9.0, 9.0, 15.5, 15.0], [40.0, 40.0, 60.0, 60.0]])
    matched = ATSSMatcher()(gt, anchors)
    assert (matched == 0).sum() == 0
    assert (matched == 1).sum() > 0


def test_centre_on_the_box_edge_is_not_inside():
    anchors = level_anchors()
    # left edge exactly on the anchor column x = 32: distance 0 is not > 0.01
    gt = torch.tensor([[32.0, 30.5, 37.0, 41.5]])
    matched = ATSSMatcher()(gt, anchors)
    flat = torch.cat(anchors)
    centers_x = (flat[:, 0] + flat[:, 2]) / 2
    assert not ((matched == 0) & (centers_x == 32.0)).any()


def test_image_without_boxes_is_all_background():
    anchors = level_anchors()
    matched = ATSSMatcher()(torch.zeros(0, 4), anchors)
    assert matched.shape == (sum(len(a) for a in anchors),)
    assert (matched == -1).all()


def test_500_boxes():
    anchors = level_anchors()
    gt = random_boxes(500, seed=123)
    matched = ATSSMatcher()(gt, anchors)
    assert matched.shape == (sum(len(a) for a in anchors),)
    assert matched.max() < 500 and (matched >= 0).any()
    assert torch.equal(matched, atss_naive(gt, anchors))


def test_topk_larger_than_a_level():
    # a 1x1 coarsest level: k = min(topk, 1) there
    anchors = level_anchors(image=32)
    assert len(anchors[-1]) == 1
    gt = random_boxes(6, image=32, seed=7)
    assert torch.equal(ATSSMatcher()(gt, anchors), atss_naive(gt, anchors))
