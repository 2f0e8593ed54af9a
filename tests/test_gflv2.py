"""
GFL V2: the distribution-guided quality predictor, QFL on the fused probability,
and the authors' checkpoints.

The reference numbers come from the authors' own code (implus/GFocalV2, run by
tests/fixtures/make_gfocalv2_fixture.py): a small ``GFocalHead``'s weights,
inputs, outputs, losses and a gradient (gfocalv2_head_reference.pt), and every
key, shape and dtype of their released detectors' state dicts
(gfocalv2_state_dicts.json).
"""
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from gfl_d2 import GFL, add_gfl_config
from gfl_d2.convert import ConversionError, _rename, convert_mmdet_state_dict
from gfl_d2.modeling import (
    DistributionGuidedQualityPredictor,
    GFLHead,
    GFLVariant,
    distribution_statistics,
    fused_quality_focal_loss,
)
from gfl_d2.testing import ROOT, tiny_gfl_config, train_step, two_image_batch
from .mmdet_gfl_reference import FIXTURES, GFOCALV2_FIXTURE, mmdet_gfl_state_dict, mmdet_state_dict_layout

REFERENCE = os.path.join(FIXTURES, "gfocalv2_head_reference.pt")


def bce_on_probabilities(p, y, beta):
    """QFL as the authors compute it with use_sigmoid=False: binary cross-entropy on the probability."""
    return F.binary_cross_entropy(p, y, reduction="none") * (y - p).abs().pow(beta)


# ---------------------------------------------------------------- the predictor
def test_statistics_are_each_edges_topk_then_their_mean():
    probs = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05], [0.2] * 5, [0.0, 0.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.2, 0.1, 0.1]])
    stats = distribution_statistics(probs[None], topk=4)  # (1, 4 edges, 5)
    expected = [[0.5, 0.2, 0.15, 0.1], [0.2] * 4, [1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.2, 0.1]]
    expected = torch.tensor([row + [sum(row) / 4] for row in expected])
    torch.testing.assert_close(stats[0], expected)
    assert distribution_statistics(probs, topk=2, add_mean=False).shape == (4, 2)
    with pytest.raises(ValueError, match="topk=6 is larger than the 5 bins"):
        distribution_statistics(probs, topk=6)


def test_predictor_reads_the_distributions_of_the_head_layout():
    """(N, 4(n+1), H, W) logits per level: the 20 statistics in the order (l, t, r, b) x (top-4, mean), then the 1x1 convs."""
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
        stats = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2).reshape(n, 20, h, w)  # conv layout
        torch.testing.assert_close(q, predictor.layers(stats), rtol=1e-5, atol=1e-6)
    stats = predictor.statistics(levels)
    assert stats.shape == (2, 15 + 2, 20)
    with pytest.raises(ValueError, match="not 4 \\* \\(n \\+ 1\\)"):
        predictor([torch.randn(1, 66, 2, 2)])
    # an untrained predictor says 0.5 everywhere: the fused score starts at half the prior
    fresh = DistributionGuidedQualityPredictor()(levels)
    assert all(torch.allclose(q.sigmoid(), torch.full_like(q, 0.5), atol=1e-3) for q in fresh)


# ---------------------------------------------------------------- the loss
def test_fused_qfl_is_bce_on_the_product_probability():
    torch.manual_seed(0)
    a, b = torch.randn(64, 5) * 3, torch.randn(64, 1) * 3
    y = torch.rand(64, 5) * (torch.rand(64, 5) < 0.3)
    p = a.double().sigmoid() * b.double().sigmoid()
    for beta in (0.0, 1.0, 2.0):
        got = fused_quality_focal_loss(a, b, y, beta)
        assert got.dtype == torch.float32 and got.shape == (64, 5)
        torch.testing.assert_close(got.double(), bce_on_probabilities(p, y.double(), beta), rtol=1e-5, atol=1e-7)


def test_fused_qfl_gradient_is_the_formulas():
    torch.manual_seed(1)
    a, b = (torch.randn(32, 4, dtype=torch.float64) * 2).requires_grad_(), torch.randn(32, 1, dtype=torch.float64).requires_grad_()
    y = torch.rand(32, 4, dtype=torch.float64) * (torch.rand(32, 4) < 0.5)
    fused_quality_focal_loss(a, b, y).sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    bce_on_probabilities(a2.sigmoid() * b2.sigmoid(), y, 2.0).sum().backward()
    # float32 inside the loss: compare at float32 precision
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-4, atol=1e-6)


def test_fused_qfl_is_finite_at_extreme_logits_and_in_half_precision():
    a = torch.tensor([[200.0, -200.0, 40.0, -40.0, 0.0]], requires_grad=True)
    b = torch.tensor([[200.0]], requires_grad=True)
    y = torch.tensor([[0.0, 0.0, 1.0, 0.7, 0.3]])
    loss = fused_quality_focal_loss(a, b, y)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert loss[0, 0].item() == pytest.approx(100.0)  # p = 1 for a negative: the log floor, as binary_cross_entropy's
    assert loss[0, 2].item() == pytest.approx(0.0, abs=1e-12)  # p = 1 for a target of 1
    # fp16 / bf16 logits (autocast) give the float32 loss of the same values
    torch.manual_seed(2)
    a16, b16 = (torch.randn(16, 3) * 4).half(), (torch.randn(16, 1) * 4).half()
    y = torch.rand(16, 3)
    got = fused_quality_focal_loss(a16, b16, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fused_quality_focal_loss(a16.float(), b16.float(), y))


# ---------------------------------------------------------------- the authors' head
class FixedFeatures(Backbone):
    """A backbone that returns given FPN maps (strides 8-128), so that the head sees the reference's inputs."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats

    def forward(self, x):
        return {f"p{i + 3}": f for i, f in enumerate(self.feats)}

    def output_shape(self):
        return {f"p{i + 3}": ShapeSpec(channels=self.feats[0].shape[1], stride=2 ** (i + 3)) for i in range(5)}


@pytest.fixture(scope="module")
def authors():
    return torch.load(REFERENCE, weights_only=True)


def authors_model(ref):
    """
    gfl-d2's V2 on the authors' head weights, mapped by the converter's key rules.
    Their head has a background column (use_sigmoid=False): kept here as a 4th
    class that no ground truth has, so that the whole head and loss compare.
    """
    channels = ref["config"]["cls_out_channels"]
    head = GFLHead(input_shape=[ShapeSpec(channels=8)] * 5, num_classes=channels, conv_dims=[8],
                   norm=lambda c: nn.GroupNorm(4, c), dgqp=True)
    state = {_rename("bbox_head." + k)[len("head."):]: v for k, v in ref["state_dict"].items() if k != "integral.project"}
    head.load_state_dict(state, strict=True)
    return GFL(backbone=FixedFeatures(ref["feats"]), head=head, head_in_features=[f"p{i}" for i in range(3, 8)],
               num_classes=channels, quality="dgqp", pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)


def test_fused_score_and_box_outputs_equal_the_authors_head(authors):
    model = authors_model(authors)
    with torch.no_grad():
        cls, box, quality = model.head(authors["feats"])
    for c, q, ref in zip(cls, quality, authors["cls_scores"]):
        torch.testing.assert_close(c.sigmoid() * q.sigmoid(), ref, rtol=1e-6, atol=1e-7)
    for b, ref in zip(box, authors["bbox_preds"]):
        torch.testing.assert_close(b, ref, rtol=1e-6, atol=1e-7)


def test_losses_and_gradient_equal_the_authors(authors):
    model = authors_model(authors).train()
    h, w, _ = authors["img_metas"][0]["img_shape"]
    inputs = [
        {"image": torch.zeros(3, h, w), "instances": Instances((h, w), gt_boxes=Boxes(b), gt_classes=l)}
        for b, l in zip(authors["gt_bboxes"], authors["gt_labels"])
    ]
    with EventStorage():
        losses = model(inputs)
    for ours, theirs in (("loss_qfl", "loss_cls"), ("loss_bbox", "loss_bbox"), ("loss_dfl", "loss_dfl")):
        assert losses[ours].item() == pytest.approx(float(authors["loss_totals"][theirs]), rel=1e-5), ours
    sum(losses.values()).backward()
    torch.testing.assert_close(model.head.bbox_pred.weight.grad, authors["grad_gfl_reg_weight"], rtol=1e-4, atol=1e-7)


def test_qfl_trains_the_box_distributions_through_the_predictor():
    """V2's QFL alone gives the regression branch a gradient; V1's gives it none."""
    data = two_image_batch()
    for quality, expected in (("dgqp", True), ("joint", False)):
        cfg = tiny_gfl_config()
        cfg.quality, cfg.head.dgqp = quality, quality == "dgqp"
        torch.manual_seed(0)
        model = instantiate(cfg).train()
        with EventStorage():
            losses = model(data)
        losses["loss_qfl"].backward()
        grads = [model.head.bbox_pred.weight.grad, model.head.bbox_subnet[0].weight.grad]
        if expected:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_box_loss_weights_are_the_fused_score():
    """Each positive's GIoU/DFL weight is the detached max over classes of sigmoid(cls) * sigmoid(quality)."""
    cfg = tiny_gfl_config()
    cfg.quality, cfg.head.dgqp = "dgqp", True
    torch.manual_seed(0)
    model = instantiate(cfg).train()
    with torch.no_grad():  # a quality that differs between locations
        model.head.dgqp.layers[2].weight.normal_(0.0, 3.0)
    data = two_image_batch()
    seen = []
    weights_of = model.box_loss_weights
    model.box_loss_weights = lambda scores, ctr: seen.append(weights_of(scores, ctr)) or seen[-1]
    with EventStorage():
        model(data)
        # the same positives and predictions, independently
        images = model.preprocess_image(data)
        features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
        cls, _, quality = model._transpose_dense_predictions(model.head(features), model._prediction_channels)
        labels, _ = model.label_anchors(model.anchor_generator(features), [d["instances"] for d in data])
    labels = torch.stack(labels)
    positive = (labels >= 0) & (labels != model.num_classes)
    fused = torch.cat(cls, dim=1).sigmoid() * torch.cat(quality, dim=1).sigmoid()
    expected = fused[positive].max(dim=1).values.detach()
    assert len(expected) > 0 and expected.std() > 1e-4  # the quality varies between the positives
    torch.testing.assert_close(seen[0], expected)


def test_inference_scores_are_the_product_and_the_quality_is_in_the_outputs():
    cfg = tiny_gfl_config()
    cfg.quality, cfg.head.dgqp = "dgqp", True
    torch.manual_seed(0)
    v2 = instantiate(cfg).eval()
    cfg.quality, cfg.head.dgqp = "joint", False
    v1 = instantiate(cfg).eval()
    v1.load_state_dict({k: v for k, v in v2.state_dict().items() if "dgqp" not in k})
    with torch.no_grad():
        v2.head.dgqp.layers[2].weight.zero_()
        v2.head.dgqp.layers[2].bias.fill_(0.0)  # quality 0.5
        for m in (v1, v2):
            m.head.cls_score.bias.fill_(0.0)
    v1.test_score_thresh, v2.test_score_thresh = 0.2, 0.1  # the same candidates
    image = [{"image": two_image_batch()[0]["image"]}]
    with torch.no_grad():
        r1, r2 = v1(image)[0]["instances"], v2(image)[0]["instances"]
    assert len(r2) == len(r1) > 0
    torch.testing.assert_close(r2.scores, 0.5 * r1.scores)
    torch.testing.assert_close(r2.pred_boxes.tensor, r1.pred_boxes.tensor)
    torch.testing.assert_close(r2.pred_quality, torch.full_like(r2.scores, 0.5))
    assert r2.has("pred_box_dists") and r2.has("pred_box_std") and not r1.has("pred_quality")


def test_v2_trains_under_autocast():
    cfg = tiny_gfl_config()
    cfg.quality, cfg.head.dgqp = "dgqp", True
    torch.manual_seed(0)
    model = instantiate(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, _ = train_step(model, two_image_batch())
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert torch.isfinite(model.head.dgqp.layers[0].weight.grad).all()


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cls_loss="focal", quality="dgqp"), "cls_loss='qfl' with quality='joint' or 'dgqp'"),
        (dict(quality="dgqp", box_representation="dirac"), "needs box_representation='distribution'"),
    ],
)
def test_variant_refuses_what_v2_cannot_be(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GFLVariant(**kwargs)


def test_head_and_model_settings_must_agree():
    cfg = tiny_gfl_config()
    cfg.quality = "dgqp"  # the head without the predictor
    with pytest.raises(ValueError, match="set head.dgqp=True"):
        instantiate(cfg)
    cfg.quality, cfg.head.dgqp = "joint", True
    with pytest.raises(ValueError, match="set head.dgqp=False"):
        instantiate(cfg)
    with pytest.raises(ValueError, match="choose one"):
        GFLHead(input_shape=[ShapeSpec(channels=8)] * 5, num_classes=2, conv_dims=[8], norm="", quality_branch=True,
                dgqp=True)
    assert GFLVariant(quality="dgqp").min_box_normalizer < GFLVariant().min_box_normalizer == 1.0


@pytest.mark.parametrize("name", ["gflv2_R_50_FPN_1x", "gflv2_R_50_FPN_ms2x", "gflv2_R_101_FPN_ms2x"])
def test_yacs_and_lazy_v2_configs_build_the_same_model(name):
    cfg = add_gfl_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", f"{name}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    yacs_model = build_model(cfg)
    lazy = LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", f"{name}.py"))
    lazy_model = instantiate(lazy.model)
    for m in (yacs_model, lazy_model):
        assert isinstance(m, GFL) and m.variant.quality == "dgqp" and m.head.has_quality_predictor
    assert {k: v.shape for k, v in yacs_model.state_dict().items()} == {
        k: v.shape for k, v in lazy_model.state_dict().items()
    }
    assert yacs_model.head.dgqp.layers[0].in_channels == 20 and yacs_model.head.dgqp.layers[0].out_channels == 64
    if "ms2x" in name:
        assert cfg.INPUT.MIN_SIZE_TRAIN == (480, 960) and cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range"
        assert cfg.SOLVER.MAX_ITER == lazy.train.max_iter == 180000


# ---------------------------------------------------------------- the authors' checkpoints
@pytest.mark.parametrize(
    "name, config, depth",
    [
        ("R-50 1x", "COCO-Detection/gflv2_R_50_FPN_1x.py", 50),
        ("R-50 ms2x", "COCO-Detection/gflv2_R_50_FPN_1x.py", 50),  # the same weights' layout
        ("R-101 ms2x", "COCO-Detection/gflv2_R_101_FPN_ms2x.py", 101),
    ],
)
def test_authors_v2_checkpoints_convert_and_load_strictly(name, config, depth):
    layout = [k for k, _, _ in mmdet_state_dict_layout(name, GFOCALV2_FIXTURE)]
    assert {"bbox_head.reg_conf.0.weight", "bbox_head.reg_conf.2.bias", "bbox_head.integral.project"} <= set(layout)
    sd = mmdet_gfl_state_dict(name, fixture=GFOCALV2_FIXTURE)
    converted, info = convert_mmdet_state_dict(sd, {"CLASSES": tuple(f"c{i}" for i in range(80))})
    assert (info["version"], info["config"], info["depth"], info["num_classes"]) == (2, config, depth, 80)
    assert (info["dgqp_statistics"], info["dgqp_channels"]) == (20, 64)
    model = instantiate(LazyConfig.load(os.path.join(ROOT, "configs", config)).model)
    model.load_state_dict(converted, strict=True)
    state = model.state_dict()
    for old, new in info["mapping"].items():
        expected = sd[old][:80] if old.startswith("bbox_head.gfl_cls.") else sd[old]
        assert torch.equal(state[new], expected), old
    assert set(info["mapping"]) | {k for k in info["dropped"] if k in sd} == set(sd)
    assert "background channel" in info["dropped"]["bbox_head.gfl_cls.weight[80]"]
    assert state["head.dgqp.layers.0.weight"].shape == (64, 20, 1, 1)


def test_v2_checkpoint_with_another_class_count_is_refused():
    sd = mmdet_gfl_state_dict("R-50 1x", fixture=GFOCALV2_FIXTURE)
    with pytest.raises(ConversionError, match="81 channels and the checkpoint names 81 classes"):
        convert_mmdet_state_dict(sd, {"CLASSES": tuple(f"c{i}" for i in range(81))})
    del sd["bbox_head.reg_conf.2.weight"]
    with pytest.raises(ConversionError, match="without \\['bbox_head.reg_conf.2.weight'\\]"):
        convert_mmdet_state_dict(sd)


def test_tool_converts_an_authors_v2_checkpoint_file(tmp_path):
    """As the authors' MMDetection 2.x runner saves it: meta with the class names, the state dict."""
    from detectron2.checkpoint import DetectionCheckpointer

    from gfl_d2.testing import run_tool

    sd = mmdet_gfl_state_dict("R-101 ms2x", fixture=GFOCALV2_FIXTURE)
    src, dst = tmp_path / "gfocal_r101_fpn_ms2x.pth", tmp_path / "gflv2_r101.pth"
    torch.save({"meta": {"CLASSES": tuple(f"class{i}" for i in range(80)), "epoch": 24}, "state_dict": sd}, src)
    printed = run_tool(["tools/convert_mmdet_checkpoint.py", src, dst]).stdout
    assert "GFL V2, ResNet-101" in printed and "80 classes" in printed
    assert "use it with configs/COCO-Detection/gflv2_R_101_FPN_ms2x.py" in printed
    assert "quality predictor: 20 statistics -> 64 -> 1" in printed and "background channel of gfl_cls" in printed
    model = instantiate(LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", "gflv2_R_101_FPN_ms2x.py")).model)
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys and not incompatible.incorrect_shapes
