"""Per-edge distributions and their uncertainty in the outputs (pred_box_dists, pred_box_std)."""

import math

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.structures import Boxes

from gfl_d2.modeling.box_coding import DiracBox2BoxTransform, distribution_mean_std
from gfl_d2.modeling.postprocess import decode_candidates
from gfl_d2.testing import shapes_image, tiny_gfl, tiny_gfl_config, two_bin_logits


def test_decoded_distributions_std_and_boxes():
    model = tiny_gfl()
    stride = 16.0
    centers = torch.tensor([[32.0, 32.0], [64.0, 48.0], [96.0, 96.0]])
    anchors = Boxes(torch.cat([centers - 4 * stride, centers + 4 * stride], 1))
    scores = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 0.7]])
    # edge targets in bins; 2.0 and 5.0 are exact bins (one-hot), the others split over two bins
    targets = torch.tensor([[2.0, 5.0, 1.25, 3.5], [0.5, 2.0, 2.75, 1.0], [4.0, 4.0, 4.0, 4.0]])
    box_regs = two_bin_logits(targets, model.box2box_transform.reg_max + 1).reshape(3, -1)
    # one level's candidates, decoded with the model's (the head's) box transform
    assert model.box2box_transform is model.head.box2box_transform
    inst = decode_candidates(
        model.box2box_transform, anchors, stride, scores, box_regs, (128, 128), None,
        score_thresh=0.05, topk=1000, with_distributions=model.output_box_distributions,
    )  # fmt: skip
    order = inst.scores.argsort(descending=True)
    inst = inst[order]
    dists = inst.pred_box_dists
    assert dists.shape == (3, 4, model.box2box_transform.reg_max + 1)
    torch.testing.assert_close(dists.sum(-1), torch.ones(3, 4))
    # the expectation of the distributions reproduces the box
    mean, _ = distribution_mean_std(dists)
    torch.testing.assert_close(mean, targets)
    expected = torch.cat([centers - targets[:, :2] * stride, centers + targets[:, 2:] * stride], 1)
    torch.testing.assert_close(inst.pred_boxes.tensor, expected)
    # std: 0 for a one-hot edge, sqrt(p (1 - p)) bins for a two-bin one, times the stride
    frac = targets - targets.floor()
    torch.testing.assert_close(
        inst.pred_box_std, (frac * (1 - frac)).sqrt() * stride, atol=1e-4, rtol=0
    )
    assert inst.pred_box_std[0, 0] == 0 and inst.pred_box_std[2].abs().max() == 0
    torch.testing.assert_close(
        inst.pred_box_std[0, 2], torch.tensor(math.sqrt(0.25 * 0.75) * stride)
    )


def run_model(model, image, **size):
    with torch.no_grad():
        (out,) = model([dict(image=image, **size)])
    return out["instances"]


def test_outputs_are_consistent_and_scale_with_resize():
    model = tiny_gfl()
    model.eval()
    model.test_score_thresh = 0.0
    # an untrained head predicts flat distributions (boxes of +-8 strides, all clipped);
    # concentrate them on bins 1-2 so that many boxes stay inside the image
    with torch.no_grad():
        bias = model.head.bbox_pred.bias.view(4, -1)
        bias[:, 1], bias[:, 2] = 4.0, 3.0
    image = shapes_image([[10, 10, 60, 70]], [1], size=(96, 128))
    base = run_model(model, image)
    assert len(base) > 0
    dists, std = base.pred_box_dists, base.pred_box_std
    torch.testing.assert_close(dists.sum(-1), torch.ones_like(std))
    mean, std_bins = distribution_mean_std(dists)
    # boxes strictly inside the image were not clipped: width = (l + r) * stride
    b = base.pred_boxes.tensor
    inside = (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < 128) & (b[:, 3] < 96)
    assert inside.any()
    stride_x = (b[:, 2] - b[:, 0]) / (mean[:, 0] + mean[:, 2])
    stride_y = (b[:, 3] - b[:, 1]) / (mean[:, 1] + mean[:, 3])
    torch.testing.assert_close(stride_x[inside], stride_y[inside], rtol=1e-4, atol=1e-3)
    for s in stride_x[inside].tolist():
        assert min(abs(s - k) for k in (8, 16, 32, 64, 128)) < 1e-2 * s
    torch.testing.assert_close(
        std[inside], std_bins[inside] * stride_x[inside, None], rtol=1e-4, atol=1e-4
    )

    # asking for a 2x wide, 3x high output scales x-edges by 2 and y-edges by 3
    scaled = run_model(model, image, height=288, width=256)
    torch.testing.assert_close(scaled.pred_box_dists, dists)
    torch.testing.assert_close(
        scaled.pred_box_std, std * torch.tensor([2.0, 3.0, 2.0, 3.0]), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        scaled.pred_boxes.tensor, b * torch.tensor([2.0, 3.0, 2.0, 3.0]), rtol=1e-5, atol=1e-3
    )


def test_a_dirac_model_has_no_distributions_to_output():
    cfg = tiny_gfl_config()
    cfg.head.box2box_transform = L(DiracBox2BoxTransform)(anchor_scale=8.0)
    # the default output_box_distributions=True is refused: a Dirac model has none
    with pytest.raises(ValueError, match="no edge distributions to output"):
        instantiate(cfg)
    cfg.output_box_distributions = False
    model = instantiate(cfg)
    assert model.output_box_distributions is False
    with pytest.raises(ValueError, match="no edge distributions to output"):
        model.output_box_distributions = True
    model.output_box_distributions = False  # turning them off is always fine
    model.eval()
    with torch.no_grad():
        inst = model([{"image": shapes_image([[10, 10, 60, 70]], [1])}])[0]["instances"]
    assert not inst.has("pred_box_dists") and not inst.has("pred_box_std")
