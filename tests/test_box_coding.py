import pytest
import torch

from gfl_d2.modeling.box_coding import (
    DiracBox2BoxTransform,
    DistributionBox2BoxTransform,
    anchor_points,
    box2distance,
    distance2box,
    integral,
)
from gfl_d2.testing import two_bin_logits


def test_integral_of_one_hot_is_the_bin():
    n = 16
    logits = torch.full((4, n + 1), -1e4)
    for e, b in enumerate([0, 3, 9, 16]):
        logits[e, b] = 0.0
    got = integral(logits.reshape(1, -1))
    torch.testing.assert_close(got, torch.tensor([[0.0, 3.0, 9.0, 16.0]]))


def test_integral_of_two_bins_is_exact_and_respects_bin_width():
    y = torch.tensor([[0.25, 4.5, 7.75, 15.9]])
    logits = two_bin_logits(y, 17).reshape(1, -1)
    torch.testing.assert_close(integral(logits), y)
    torch.testing.assert_close(integral(logits, bin_width=0.5), y * 0.5)


def test_integral_layout_is_edge_major():
    # channel c = edge * (n+1) + bin
    n = 4
    logits = torch.full((4 * (n + 1),), -1e4)
    logits[0 * 5 + 1] = 0  # left -> 1
    logits[1 * 5 + 2] = 0  # top -> 2
    logits[2 * 5 + 3] = 0  # right -> 3
    logits[3 * 5 + 4] = 0  # bottom -> 4
    torch.testing.assert_close(integral(logits), torch.tensor([1.0, 2.0, 3.0, 4.0]))


def test_integral_stays_fp32_under_autocast():
    logits = torch.randn(10, 68).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = integral(logits)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, integral(logits.float()))


def test_distance_box_round_trip():
    torch.manual_seed(0)
    centers = torch.rand(50, 2) * 100
    dists = torch.rand(50, 4) * 30
    boxes = distance2box(centers, dists)
    torch.testing.assert_close(boxes[:, :2], centers - dists[:, :2])
    torch.testing.assert_close(box2distance(centers, boxes), dists)


def anchors_at(centers, stride, scale=8.0):
    half = stride * scale / 2
    return torch.cat([centers - half, centers + half], dim=1)


def test_encode_decode_round_trip():
    torch.manual_seed(1)
    t = DistributionBox2BoxTransform(reg_max=16)
    stride = 8.0
    centers = torch.rand(40, 2) * 200 + 50
    anchors = anchors_at(centers, stride)
    dists = torch.rand(40, 4) * 15 * stride  # within range: no clamping
    gt = distance2box(centers, dists)
    points, strides = anchor_points(anchors, torch.full((40,), stride))
    torch.testing.assert_close(points, centers)
    targets = t.encode(points, strides, gt)
    torch.testing.assert_close(targets, dists / stride)
    decoded = t.decode(two_bin_logits(targets, 17).reshape(40, -1))
    torch.testing.assert_close(
        distance2box(centers, decoded.distances * strides), gt, atol=1e-3, rtol=0
    )
    # the two-bin distributions: mass on the bins either side of the target, std below one bin
    assert decoded.probs.shape == (40, 4, 17) and (decoded.std < 0.5 + 1e-4).all()


def test_encode_clamps_to_reg_max_minus_0_1():
    t = DistributionBox2BoxTransform(reg_max=16)
    stride = 16.0
    c = torch.tensor([[100.0, 100.0]])
    points, strides = anchor_points(anchors_at(c, stride), torch.tensor([stride]))
    far = torch.tensor([[100 - 40 * stride, 100 - 1.0, 100 + 2.5 * stride, 100 + 16 * stride]])
    targets = t.encode(points, strides, far)
    torch.testing.assert_close(targets, torch.tensor([[15.9, 1 / stride, 2.5, 15.9]]))
    # a centre outside the box gives a negative distance: clamped to 0
    outside = torch.tensor([[110.0, 50.0, 150.0, 150.0]])
    assert t.encode(points, strides, outside)[0, 0] == 0.0


@pytest.mark.parametrize("bin_width", [0.5, 1.0, 2.0])
def test_bin_width_scales_targets(bin_width):
    t = DistributionBox2BoxTransform(reg_max=16, bin_width=bin_width)
    c = torch.tensor([[64.0, 64.0]])
    points, strides = anchor_points(anchors_at(c, 8.0), torch.tensor([8.0]))
    gt = distance2box(c, torch.tensor([[8.0, 16.0, 24.0, 4.0]]))
    targets = t.encode(points, strides, gt)
    torch.testing.assert_close(
        targets, (torch.tensor([[1.0, 2.0, 3.0, 0.5]]) / bin_width).clamp(max=15.9)
    )


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="reg_max"):
        DistributionBox2BoxTransform(reg_max=0)
    with pytest.raises(ValueError, match="bin_width"):
        DistributionBox2BoxTransform(bin_width=0)
    with pytest.raises(ValueError, match="anchor_scale"):
        DiracBox2BoxTransform(anchor_scale=0)
    with pytest.raises(ValueError, match="4 \\* \\(n\\+1\\)"):
        integral(torch.zeros(3, 10))


def test_anchor_points_take_the_stride_given_not_the_anchor_size():
    # the stride is the level's (the anchor generator's), whatever the anchor's size
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 30.0, 60.0]])
    centers, strides = anchor_points(anchors, torch.tensor([8.0, 32.0]))
    torch.testing.assert_close(centers, torch.tensor([[32.0, 32.0], [20.0, 40.0]]))
    assert strides.shape == (2, 1) and strides.dtype == torch.float32
    torch.testing.assert_close(strides, torch.tensor([[8.0], [32.0]]))
    _, same = anchor_points(anchors, torch.tensor([[8.0], [32.0]]))
    torch.testing.assert_close(same, strides)


def test_dirac_encode_decode_round_trip():
    torch.manual_seed(2)
    t = DiracBox2BoxTransform(anchor_scale=8.0)
    assert t.num_outputs == 4 and not t.has_distributions
    centers = torch.rand(20, 2) * 200 + 50
    points, strides = anchor_points(anchors_at(centers, 16.0), torch.full((20,), 16.0))
    dists = torch.rand(20, 4) * 10 * 16.0
    gt = distance2box(centers, dists)
    decoded = t.decode(t.encode(points, strides, gt))
    assert decoded.probs is None and decoded.std is None
    torch.testing.assert_close(decoded.distances * strides, dists, atol=1e-3, rtol=0)
    # an untrained output (0) decodes to the anchor: anchor_scale / 2 strides per edge
    torch.testing.assert_close(t.decode(torch.zeros(1, 4)).distances, torch.full((1, 4), 4.0))


def test_transforms_compare_and_print_by_their_settings():
    assert DistributionBox2BoxTransform(16, 1.0) == DistributionBox2BoxTransform()
    assert DistributionBox2BoxTransform(8) != DistributionBox2BoxTransform(16)
    assert DistributionBox2BoxTransform(16, 0.5) != DistributionBox2BoxTransform(16, 1.0)
    assert DiracBox2BoxTransform(8.0) == DiracBox2BoxTransform()
    assert DiracBox2BoxTransform(4.0) != DiracBox2BoxTransform(8.0)
    assert DiracBox2BoxTransform() != DistributionBox2BoxTransform()
    assert repr(DistributionBox2BoxTransform(8, 0.5)) == (
        "DistributionBox2BoxTransform(reg_max=8, bin_width=0.5)"
    )
    assert repr(DiracBox2BoxTransform(4)) == "DiracBox2BoxTransform(anchor_scale=4.0)"
    assert not hasattr(DistributionBox2BoxTransform(), "anchor_scale")
    assert not hasattr(DistributionBox2BoxTransform(), "centers_and_strides")
