"""GFL's cpu_inference='frozen': the backbone and head through a frozen oneDNN trace, equal to eager up to rounding."""

import logging

import pytest
import torch
import torchvision
from detectron2.config import get_cfg, instantiate

from gfl_d2.config import add_gfl_config
from gfl_d2.modeling.frozen_inference import FrozenCPUInference
from gfl_d2.modeling.postprocess import class_aware_nms
from gfl_d2.testing import tiny_gfl, tiny_gfl_config, two_image_batch

# float32 noise: the frozen graph folds normalisation into the convolutions and may sum in another order; about
# sqrt(fan-in) x depth roundings of 2^-24 at each value's scale (as the behaviour lock, tests/reference_outputs.py)
ROUNDINGS = 2**11 * 2**-24


def confident(model):
    """A tiny GFL whose head gives many detections (at initialisation every score is ~0.01)."""
    with torch.no_grad():
        model.head.cls_score.bias.fill_(0.0)
    return model.eval()


def assert_same_detections(actual, expected, model):
    """
    The same detections as a set, up to rounding. Where a score lies within
    rounding of the score threshold or of the last kept detection, another
    CPU may keep or drop it (or swap it with the next), so such a detection
    may be missing on either side; every other one must match.
    """
    score_tol, box_tol = ROUNDINGS, ROUNDINGS * 160
    cutoff = model.test_score_thresh
    for side in (actual, expected):
        if len(side) >= model.max_detections_per_image:
            cutoff = max(cutoff, side.scores.min().item())
    unmatched = list(range(len(actual)))
    for cls, score, box in zip(
        expected.pred_classes.tolist(), expected.scores.tolist(), expected.pred_boxes.tensor
    ):
        hit = next(
            (
                i
                for i in unmatched
                if actual.pred_classes[i].item() == cls
                and abs(actual.scores[i].item() - score) <= score_tol
                and (actual.pred_boxes.tensor[i] - box).abs().max().item() <= box_tol
            ),
            None,
        )
        if hit is None:
            assert score <= cutoff + score_tol, (
                f"no detection of class {cls}, score {score}, box {box.tolist()}"
            )
        else:
            unmatched.remove(hit)
    extra = [
        actual.scores[i].item() for i in unmatched if actual.scores[i].item() > cutoff + score_tol
    ]
    assert not extra, f"detections the other side lacks, scores {extra}"


def assert_close_to_rounding(actual, expected):
    for a, e in zip(actual, expected):
        scale = e.abs().max().item()
        assert (a - e).abs().max().item() <= ROUNDINGS * scale, (a - e).abs().max().item() / scale


def head_outputs_both_ways(model, images):
    frozen = FrozenCPUInference(model.backbone, model.head, model.head_in_features)
    with torch.no_grad():
        features = model.backbone(images)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        frozen_features, frozen_predictions = frozen(images)
    return (features, predictions), (frozen_features, frozen_predictions), frozen


def test_frozen_backbone_and_head_equal_eager_up_to_rounding_at_any_size():
    model = confident(tiny_gfl())
    (features, predictions), (f2, p2), frozen = head_outputs_both_ways(
        model, torch.randn(2, 3, 128, 160)
    )
    assert_close_to_rounding(f2, features)
    assert [len(kind) for kind in p2] == [len(kind) for kind in predictions]
    for kind, kind2 in zip(predictions, p2):
        assert_close_to_rounding(kind2, kind)
    # the trace holds no shapes: another size and batch runs through the same graph
    key = frozen._key
    with torch.no_grad():
        other = torch.randn(1, 3, 96, 224)
        eager = model.head([model.backbone(other)[f] for f in model.head_in_features])
        _, frozen_predictions = frozen(other)
    assert frozen._key == key
    for kind, kind2 in zip(eager, frozen_predictions):
        assert_close_to_rounding(kind2, kind)


def test_detections_equal_eager_and_the_graph_follows_new_weights():
    model = confident(tiny_gfl())
    data = two_image_batch()
    with torch.no_grad():
        eager = model(data)
        model.cpu_inference = "frozen"
        frozen = model(data)
    assert model._frozen_cpu._key is not None  # it ran frozen
    for e, f in zip(eager, frozen):
        e, f = e["instances"], f["instances"]
        assert len(e) > 10
        assert_same_detections(f, e, model)

    # new weights loaded in place (load_state_dict copies into the tensors): the frozen graph is rebuilt
    state = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    with torch.no_grad():
        frozen = model(data)
        model.cpu_inference = "eager"
        eager = model(data)
    for e, f in zip(eager, frozen):
        torch.testing.assert_close(
            f["instances"].scores, e["instances"].scores, rtol=0, atol=ROUNDINGS
        )


def test_frozen_runs_only_for_cpu_inference_without_gradients_or_autocast():
    model = confident(tiny_gfl())
    model.cpu_inference = "frozen"
    with torch.no_grad():
        assert model._runs_frozen()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not model._runs_frozen()
        model.train()
        assert not model._runs_frozen()
    model.eval()
    assert not model._runs_frozen()  # gradients enabled: eager, so that they flow


def test_a_model_that_cannot_be_traced_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    model = confident(tiny_gfl())
    data = two_image_batch()
    with torch.no_grad():
        eager = model(data)

    def untraceable(self, example):
        raise RuntimeError("Tracer cannot infer type of output")

    monkeypatch.setattr(FrozenCPUInference, "_build", untraceable)
    model.cpu_inference = "frozen"
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = model(data)
        model(data)  # not tried again for the same weights: one warning
    warnings = [r for r in caplog.records if "fell back to eager" in r.getMessage()]
    assert len(warnings) == 1 and "Tracer cannot infer type of output" in warnings[0].getMessage()
    for e, o in zip(eager, out):
        assert torch.equal(o["instances"].scores, e["instances"].scores)


def test_cpu_inference_setting_in_both_config_systems():
    cfg = add_gfl_config(get_cfg())
    assert cfg.MODEL.GFL.CPU_INFERENCE == "eager"
    cfg = tiny_gfl_config()
    cfg.cpu_inference = "fast"
    with pytest.raises(ValueError, match="cpu_inference must be one of"):
        instantiate(cfg)


def test_class_aware_nms_equals_nms_within_each_class():
    g = torch.Generator().manual_seed(0)
    n, h, w = 3000, 600, 900  # above 1000 boxes torchvision loops over the classes on the CPU
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 60.0, h - 60.0])
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 55], dim=1)
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, 80, (n,), generator=g)
    keep = class_aware_nms(boxes, scores, classes, 0.6, (h, w))
    expected = torchvision.ops.batched_nms(boxes, scores, classes, 0.6)
    assert torch.equal(keep, expected)
    assert class_aware_nms(boxes[:0], scores[:0], classes[:0], 0.6, (h, w)).numel() == 0
