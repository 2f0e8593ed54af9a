"""
The dynamic soft-label assigner (gfl_d2.modeling.dsl_assigner) on cases whose
answer is known; it equals NanoDet's own assigner in tests/test_nanodet_e2e.py
(needs a NanoDet source tree).
"""

import torch

from gfl_d2.modeling.dsl_assigner import DynamicSoftLabelAssigner


def grid(n=10, stride=8.0):
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1).float() * stride


def test_a_box_takes_its_best_points_inside_it_and_nothing_else():
    points = grid()
    # every point predicts the same 24x24 box around itself
    pred = torch.cat([points - 12, points + 12], 1)
    gt = torch.tensor([[20.0, 20.0, 44.0, 44.0]])
    matched, iou = DynamicSoftLabelAssigner()(
        torch.zeros(100, 3), points, pred, gt, torch.tensor([1])
    )
    inside = ((points > 20) & (points < 44)).all(1)
    assert (matched[~inside] == -1).all()  # only points strictly inside are candidates
    # the point at the box centre predicts it exactly: IoU 1, and it is taken
    centre = ((points - 32).abs().sum(1) == 0).nonzero()[0, 0]
    assert matched[centre] == 0 and torch.isclose(iou[centre], torch.tensor(1.0))
    # k = int(sum of the top-13 IoUs) >= 1 points, the cheapest (here: the best IoUs)
    assert 1 <= (matched == 0).sum() <= inside.sum()


def test_a_point_claimed_by_two_boxes_goes_to_the_cheaper_one():
    points = grid()
    pred = torch.cat([points - 12, points + 12], 1)
    gt = torch.tensor([[20.0, 20.0, 44.0, 44.0], [21.0, 21.0, 45.0, 45.0]])
    matched, _ = DynamicSoftLabelAssigner()(
        torch.zeros(100, 3), points, pred, gt, torch.tensor([0, 2])
    )
    assert set(matched.tolist()) <= {-1, 0, 1}
    # (32, 32) predicts the first box exactly (IoU 1) and the second less well: both take it
    # among their cheapest points, and the cheaper pair wins
    centre = ((points - 32).abs().sum(1) == 0).nonzero()[0, 0]
    assert matched[centre] == 0


def test_no_ground_truth_or_no_candidate_is_all_background():
    points = grid()
    pred = torch.cat([points - 12, points + 12], 1)
    assigner = DynamicSoftLabelAssigner()
    matched, iou = assigner(torch.zeros(100, 3), points, pred, torch.zeros(0, 4), torch.zeros(0))
    assert (matched == -1).all() and (iou == 0).all()
    far = torch.tensor([[500.0, 500.0, 600.0, 600.0]])
    matched, _ = assigner(torch.zeros(100, 3), points, pred, far, torch.tensor([0]))
    assert (matched == -1).all()
