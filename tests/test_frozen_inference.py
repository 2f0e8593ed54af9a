"""
Frozen CPU inference (``gfl_d2.cpu_inference``): a detector's backbone and head
through a frozen oneDNN trace, equal to eager up to rounding.
"""

import logging

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from gfl_d2.config import add_gfl_config
from gfl_d2.cpu_inference import FrozenCPUDetector, FrozenCPUInference, for_cpu_inference
from gfl_d2.modeling.postprocess import class_aware_nms
from gfl_d2.testing import tiny_gfl, two_image_batch

# float32 noise: the frozen graph folds normalisation into the convolutions and may sum in
# another order; about sqrt(fan-in) x depth roundings of 2^-24 at each value's scale (as the
# behaviour lock, tests/reference_outputs.py)
ROUNDINGS = 2**11 * 2**-24


def confident(model):
    """A tiny GFL whose head gives many detections (at initialisation every score is ~0.01)."""
    with torch.no_grad():
        model.head.cls_score.bias.fill_(0.0)
    return model.eval()


def assert_same_detections(actual, expected, model, score_tol=ROUNDINGS, box_tol=ROUNDINGS * 160):
    """
    The same detections as a set, up to rounding (``score_tol``, ``box_tol``
    pixels). Where a score lies within rounding of the score threshold or of
    the last kept detection, another CPU may keep or drop it (or swap it with
    the next), so such a detection may be missing on either side; every other
    one must match.
    """
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
    frozen_model = FrozenCPUDetector(model).eval()
    data = [dict(x, height=200, width=180) for x in two_image_batch()]  # resized outputs too
    with torch.no_grad():
        eager = model(data)
        frozen = frozen_model(data)
    assert frozen_model._frozen._key is not None  # it ran frozen
    for e, f in zip(eager, frozen):
        e, f = e["instances"], f["instances"]
        assert len(e) > 10
        assert f.image_size == e.image_size == (200, 180)
        assert set(f.get_fields()) == set(e.get_fields())
        assert_same_detections(f, e, model)

    # new weights loaded in place (load_state_dict copies into the tensors): the frozen graph
    # is rebuilt
    key = frozen_model._frozen._key
    state = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    with torch.no_grad():
        frozen = frozen_model(data)
        eager = model(data)
    assert frozen_model._frozen._key not in (None, key)
    for e, f in zip(eager, frozen):
        torch.testing.assert_close(
            f["instances"].scores, e["instances"].scores, rtol=0, atol=ROUNDINGS
        )
    # the frozen model's state is the detector's: its checkpoints load into a plain GFL
    assert set(frozen_model.detector.state_dict()) == set(model.state_dict())


def test_frozen_runs_only_for_cpu_inference_without_gradients_or_autocast(monkeypatch):
    model = confident(tiny_gfl())
    frozen_model = FrozenCPUDetector(model).eval()
    with torch.no_grad():
        assert frozen_model.runs_frozen()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not frozen_model.runs_frozen()
        frozen_model.train()
        assert not frozen_model.runs_frozen() and model.training  # train() reaches the detector
    frozen_model.eval()
    assert not frozen_model.runs_frozen()  # gradients enabled: eager, so that they flow

    # where it does not run frozen, it is the detector's own forward: training gives the losses
    calls = []
    monkeypatch.setattr(FrozenCPUInference, "__call__", lambda self, x: calls.append(x))
    frozen_model.train()
    with EventStorage():
        losses = frozen_model(two_image_batch())
    assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl"}
    frozen_model.eval()
    out = frozen_model(two_image_batch())  # with gradients
    assert out[0]["instances"].scores.requires_grad
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        frozen_model(two_image_batch())
    assert not calls


def test_a_model_that_cannot_be_traced_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    model = confident(tiny_gfl())
    data = two_image_batch()
    with torch.no_grad():
        eager = model(data)

    def untraceable(self, example):
        raise RuntimeError("Tracer cannot infer type of output")

    monkeypatch.setattr(FrozenCPUInference, "_build", untraceable)
    frozen_model = FrozenCPUDetector(model).eval()
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = frozen_model(data)
        frozen_model(data)  # not tried again for the same weights: one warning
    warnings = [r for r in caplog.records if "fell back to eager" in r.getMessage()]
    assert len(warnings) == 1 and "Tracer cannot infer type of output" in warnings[0].getMessage()
    for e, o in zip(eager, out):
        assert torch.equal(o["instances"].scores, e["instances"].scores)


def test_cpu_inference_setting():
    cfg = add_gfl_config(get_cfg())
    assert cfg.TEST.CPU_INFERENCE == "eager" and "CPU_INFERENCE" not in cfg.MODEL.GFL
    model = tiny_gfl()
    assert for_cpu_inference(model) is model
    assert for_cpu_inference(model, "eager") is model
    wrapped = for_cpu_inference(model, "frozen")
    assert isinstance(wrapped, FrozenCPUDetector) and wrapped.detector is model
    assert wrapped.device == model.device
    with pytest.raises(ValueError, match="cpu_inference must be one of"):
        for_cpu_inference(model, "fast")


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
