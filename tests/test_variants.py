"""
The paper's ablation variants of the GFL model (gfl_d2.modeling.variants): each
trains and infers, the settings are validated once, and each variant's targets
and losses are the baselines' own (ATSS's centerness, FCOS's GIoU regression).
"""

import glob
import os
import re

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from fvcore.nn import giou_loss
from omegaconf import OmegaConf

from gfl_d2.lazy_config import load_lazy_config
from gfl_d2.modeling import (
    GFL,
    QFLFCOS,
    DiracBox2BoxTransform,
    DistributionBox2BoxTransform,
    GFLVariant,
    QFLRetinaNet,
)
from gfl_d2.modeling.box_coding import anchor_points, distance2box
from gfl_d2.testing import tiny_gfl_config, train_step, two_bin_logits, two_image_batch

from .repo import ROOT

SHAPES = os.path.join(ROOT, "configs", "Synthetic")
# every variant of tools/ablation.py is one of these config files
VARIANT_CONFIGS = sorted(
    glob.glob(os.path.join(SHAPES, "*.py")) + glob.glob(os.path.join(SHAPES, "Ablations", "*.py"))
)


def load(config):
    return instantiate(load_lazy_config(os.path.join(SHAPES, config)).model)


@pytest.mark.parametrize("config", VARIANT_CONFIGS, ids=lambda p: os.path.relpath(p, SHAPES))
def test_every_variant_trains_a_step_and_infers(config):
    torch.manual_seed(0)
    model = instantiate(load_lazy_config(config).model)
    losses, _ = train_step(model, two_image_batch())
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    # every parameter takes part, so DDP needs no find_unused_parameters
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"], "height": 64, "width": 96} for x in two_image_batch()])
    assert [o["instances"].image_size for o in out] == [
        (64, 96),
        (64, 96),
    ]  # resized to the requested size


def test_variant_settings_reach_the_model():
    atss, gfl = load("atss_R_18_FPN_shapes.py"), load("gfl_R_18_FPN_shapes.py")
    assert atss.variant == GFLVariant("focal", "centerness", "dirac", "centerness")
    assert gfl.variant == GFLVariant("qfl", "joint", "distribution", "score")
    assert atss.head.bbox_pred.out_channels == 4 and gfl.head.bbox_pred.out_channels == 68
    assert load("Ablations/gfl_n8_R_18_FPN_shapes.py").head.bbox_pred.out_channels == 36
    assert load("Ablations/gfl_delta0_5_R_18_FPN_shapes.py").box2box_transform.bin_width == 0.5
    assert load("Ablations/gfl_beta0_R_18_FPN_shapes.py").cls_loss.beta == 0
    assert type(load("retinanet_qfl_R_18_FPN_shapes.py")) is QFLRetinaNet
    assert type(load("fcos_qfl_R_18_FPN_shapes.py")) is QFLFCOS
    # identical backbones everywhere
    names = ("retinanet", "fcos", "atss", "gfl")
    shapes = {
        n: sum(p.numel() for p in load(f"{n}_R_18_FPN_shapes.py").backbone.parameters())
        for n in names
    }
    assert len(set(shapes.values())) == 1, shapes


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cls_loss="qfl", quality="centerness"), "the classification loss follows the quality"),
        (dict(cls_loss="focal", quality="joint"), "the classification loss follows the quality"),
        (dict(cls_loss="ce"), "cls_loss"),
        (dict(box_loss_weighting="iou"), "box_loss_weighting"),
    ],
)
def test_bad_variant_settings_are_refused(kwargs, match):
    quality = kwargs.pop("quality", "joint")
    cfg = tiny_gfl_config(quality=quality)  # the quality is the head's
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=match):
        instantiate(cfg)


def test_a_box_representation_that_does_not_exist_is_refused():
    # in a model the box representation is the head's transform object; the variant checks names
    with pytest.raises(ValueError, match="box_representation"):
        GFLVariant(box_representation="gaussian")


def use_dirac(cfg):
    """The Dirac delta: the head's transform, and no distributions to output."""
    cfg.model.head.box2box_transform = L(DiracBox2BoxTransform)(anchor_scale=8.0)
    cfg.model.output_box_distributions = False


@pytest.mark.parametrize(
    "overrides, edit, box_channels, quality_branch, quality_predictor",
    [
        (["model.head.box2box_transform.reg_max=8"], None, 36, False, False),
        ([], use_dirac, 4, False, False),
        (["model.head.quality=dgqp"], None, 68, False, True),
        (["model.head.quality=iou"], None, 68, True, False),
    ],
    ids=["n", "dirac", "v2", "iou-branch"],
)
def test_one_head_setting_sets_the_layout(
    overrides, edit, box_channels, quality_branch, quality_predictor
):
    """Each idea is set once, on the head; the head's layout and the model's decoding follow."""
    cfg = load_lazy_config(os.path.join(SHAPES, "gfl_R_18_FPN_shapes.py"), overrides)
    if edit is not None:
        edit(cfg)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    head = model.head
    assert head.output_channels[1] == head.box2box_transform.num_outputs == box_channels
    assert model.box2box_transform is head.box2box_transform
    assert model.variant.quality == head.quality
    assert (
        head.bbox_pred.out_channels,
        head.has_quality_branch,
        hasattr(head, "quality_pred"),
    ) == (box_channels, quality_branch, quality_branch)
    assert head.has_quality_predictor == hasattr(head, "dgqp") == quality_predictor
    assert model.box2box_transform.num_outputs == box_channels
    losses, _ = train_step(model, two_image_batch())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    model.eval()
    model.test_score_thresh = 0.0
    with torch.no_grad():
        (out,) = model([{"image": two_image_batch()[0]["image"]}])
    assert len(out["instances"]) > 0
    assert out["instances"].has("pred_quality") == (quality_branch or quality_predictor)


def test_reg_max_alone_trains_with_its_bins():
    cfg = tiny_gfl_config()
    cfg.head.box2box_transform.reg_max = 8
    torch.manual_seed(0)
    model = instantiate(cfg)
    assert (
        model.head.box2box_transform.num_outputs == model.head.bbox_pred.out_channels == 36
        and model.box2box_transform.reg_max == 8
    )
    losses, _ = train_step(model, two_image_batch())
    assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl"} and all(
        torch.isfinite(v) for v in losses.values()
    )
    assert model.head.bbox_pred.weight.grad.shape[0] == 36


@pytest.mark.parametrize(
    "atss_config, gfl_config",
    [
        ("Synthetic/atss_R_18_FPN_shapes.py", "Synthetic/gfl_R_18_FPN_shapes.py"),
        ("COCO-Detection/atss_R_50_FPN_1x.py", "COCO-Detection/gfl_R_50_FPN_1x.py"),
    ],
    ids=["shapes", "coco"],
)
def test_atss_config_sets_the_head_only(atss_config, gfl_config):
    """
    ATSS differs from GFL in the head's quality and box transform (one setting
    each), and in turning off the distributions it has no longer to output;
    the head built has ATSS's layout.
    """
    atss = load_lazy_config(os.path.join(ROOT, "configs", atss_config))
    gfl = load_lazy_config(os.path.join(ROOT, "configs", gfl_config))
    atss_head = OmegaConf.to_container(atss.model.head)
    gfl_head = OmegaConf.to_container(gfl.model.head)
    changed = {k for k in gfl_head if atss_head[k] != gfl_head[k]}
    assert changed == {"quality", "box2box_transform"}, changed
    keys = (set(gfl.model) | set(atss.model)) - {"head"}
    changed = {k for k in keys if atss.model.get(k) != gfl.model.get(k)}
    assert changed == {"output_box_distributions"}, changed
    assert atss.model.output_box_distributions is False
    assert instantiate(atss.model.head.box2box_transform) == DiracBox2BoxTransform(8.0)
    head = instantiate(atss.model.head)
    assert (
        head.bbox_pred.out_channels == 4
        and head.has_quality_branch
        and not head.has_quality_predictor
    )


@pytest.mark.parametrize(
    "setting", ["reg_max", "bin_width", "anchor_scale", "quality", "box_representation"]
)
def test_the_model_has_no_layout_setting_of_its_own(setting):
    """The layout has one home, the head: a model-level copy of it is no argument of GFL."""
    cfg = tiny_gfl_config()
    setattr(cfg, setting, {"reg_max": 8, "bin_width": 0.5, "anchor_scale": 4.0}.get(setting, "x"))
    with pytest.raises(TypeError, match=setting):
        instantiate(cfg)


@pytest.mark.parametrize("bin_width", [1.0, 0.5])
def test_the_model_decodes_with_the_heads_transform(bin_width):
    cfg = tiny_gfl_config()
    cfg.head.box2box_transform.bin_width = bin_width
    model = instantiate(cfg)
    assert model.box2box_transform is model.head.box2box_transform
    assert model.box2box_transform == DistributionBox2BoxTransform(16, bin_width)
    # one level (stride 8): each edge's distribution on two bins, decoded as bins x Δ x stride
    centers = torch.tensor([[40.0, 40.0], [80.0, 64.0]])
    anchors = Boxes(torch.cat([centers - 32, centers + 32], dim=1))
    targets = torch.tensor([[2.0, 3.5, 1.25, 4.0], [1.0, 0.5, 2.75, 3.0]])
    box_regs = two_bin_logits(targets, 17).reshape(2, -1)
    scores = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.0, 0.8]])
    inst = model.inference_single_image([anchors], [scores], [box_regs], (128, 128))
    expected = distance2box(centers, targets * bin_width * 8.0)
    torch.testing.assert_close(inst.pred_boxes.tensor, expected)
    torch.testing.assert_close(inst.pred_classes, torch.tensor([0, 2]))


def test_head_refuses_a_quality_its_box_outputs_cannot_give():
    cfg = tiny_gfl_config(quality="dgqp", box_representation="dirac")
    with pytest.raises(ValueError, match="it needs a DistributionBox2BoxTransform"):
        instantiate(cfg)
    cfg = tiny_gfl_config(reg_max=2, quality="dgqp")  # the top 4 of 3 bins
    message = (
        "reads the top 4 of each edge's n + 1 bins, but "
        "DistributionBox2BoxTransform(reg_max=2, bin_width=1.0) gives 3"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        instantiate(cfg)
    cfg = tiny_gfl_config(quality="centre")
    with pytest.raises(ValueError, match="quality must be one of"):
        instantiate(cfg)


def tiny_variant(quality="joint", box_representation="distribution", **kwargs):
    """The tiny GFL with the head's ``quality`` and box representation, the model's ``kwargs``."""
    cfg = tiny_gfl_config(quality=quality, box_representation=box_representation)
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return instantiate(cfg)


def decode_boxes(transform, box_regs, anchors, strides):
    """(R, D) box outputs, (R, 4) anchors and (R,) their strides -> (R, 4) image boxes."""
    centers, strides = anchor_points(anchors, strides)
    return distance2box(centers, transform.decode(box_regs).distances * strides)


def labelled(model, data):
    images = model.preprocess_image(data)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    gt_labels, gt_boxes = model.label_anchors(anchors, [x["instances"] for x in data])
    return features, anchors, gt_labels, gt_boxes


def stride_boxes(anchors):
    """FCOS's anchors (a stride-sized box) at the same centres as GFL's 8 x stride anchors."""
    out = []
    for a in anchors:
        centers, half = a.get_centers(), (a.tensor[:, 2:] - a.tensor[:, :2]) / 16
        out.append(Boxes(torch.cat([centers - half, centers + half], dim=1)))
    return out


def fcos_model():
    return load("fcos_R_18_FPN_shapes.py")


def test_atss_centerness_target_equals_fcos_on_the_same_anchors():
    model = tiny_variant(cls_loss="focal", quality="centerness", box_representation="dirac")
    fcos = fcos_model()
    data = two_image_batch()
    with torch.no_grad():
        features, anchors, gt_labels, gt_boxes = labelled(model, data)
    fcos_anchors = stride_boxes(anchors)
    assert torch.equal(Boxes.cat(anchors).get_centers(), Boxes.cat(fcos_anchors).get_centers())
    strides = torch.cat(
        [torch.full((len(a),), float(s)) for a, s in zip(fcos_anchors, (8, 16, 32, 64, 128))]
    )
    torch.testing.assert_close(
        Boxes.cat(fcos_anchors).tensor[:, 2] - Boxes.cat(fcos_anchors).tensor[:, 0], strides
    )
    labels = torch.stack(gt_labels)
    pos = labels != model.num_classes
    assert pos.sum() > 5
    theirs = fcos.compute_ctrness_targets(fcos_anchors, gt_boxes)  # (N, R)

    # the quality branch is trained towards FCOS's target (BCE over positives /
    # #positives), and the GIoU loss is weighted by it (ATSS)
    num_anchors = sum(len(a) for a in anchors)
    n = len(data)
    logits = [torch.randn(n, len(a), 3) for a in anchors]
    deltas = [torch.randn(n, len(a), 4) for a in anchors]
    quality = [torch.randn(n, len(a), 1) for a in anchors]
    with EventStorage():
        losses = model.losses(anchors, logits, gt_labels, deltas, gt_boxes, quality)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_quality"}
    q = torch.cat(quality, dim=1).reshape(n, num_anchors)
    expected = F.binary_cross_entropy_with_logits(q[pos], theirs[pos], reduction="sum") / pos.sum()
    torch.testing.assert_close(losses["loss_quality"], expected)
    all_anchors, all_strides = Boxes.cat(anchors).tensor, model.level_strides(anchors)
    torch.testing.assert_close(all_strides, strides)
    pred = torch.stack(
        [
            decode_boxes(model.box2box_transform, d, all_anchors, all_strides)
            for d in torch.cat(deltas, dim=1)
        ]
    )
    giou = giou_loss(pred[pos], torch.stack(gt_boxes)[pos], reduction="none")
    expected = (giou * theirs[pos]).sum() / theirs[pos].sum() * model.loss_bbox_weight
    torch.testing.assert_close(losses["loss_bbox"], expected, rtol=1e-4, atol=1e-5)


def test_dirac_variant_is_plain_giou_regression():
    model = tiny_variant(
        cls_loss="focal", quality="none", box_representation="dirac", box_loss_weighting="none"
    )
    assert model.head.bbox_pred.out_channels == 4
    data = two_image_batch()
    with torch.no_grad():
        features, anchors, gt_labels, gt_boxes = labelled(model, data)
    fcos_anchors = Boxes.cat(stride_boxes(anchors)).tensor
    n = len(data)
    logits = [torch.randn(n, len(a), 3) for a in anchors]
    deltas = [torch.randn(n, len(a), 4) * 3 for a in anchors]  # some below -4: relu'd, as in FCOS
    with EventStorage():
        losses = model.losses(anchors, logits, gt_labels, deltas, gt_boxes)
    assert set(losses) == {"loss_cls", "loss_bbox"}  # no DFL, no quality

    pos = torch.stack(gt_labels) != model.num_classes
    linear = Box2BoxTransformLinear(normalize_by_size=True)
    all_deltas = torch.cat(deltas, dim=1)
    # distances in strides from the anchor's half-side (4 strides)
    pred = torch.stack(
        [linear.apply_deltas(d + 4.0, fcos_anchors) for d in all_deltas]
    )  # (N, R, 4) pixels
    expected = (
        giou_loss(pred[pos], torch.stack(gt_boxes)[pos], reduction="mean") * model.loss_bbox_weight
    )
    torch.testing.assert_close(losses["loss_bbox"], expected, rtol=1e-4, atol=1e-5)

    # inference decodes the same boxes
    anchors_cat = Boxes.cat(anchors).tensor
    torch.testing.assert_close(
        decode_boxes(
            model.box2box_transform, all_deltas[0], anchors_cat, model.level_strides(anchors)
        ),
        pred[0],
    )


def test_untrained_dirac_variant_predicts_its_anchors():
    model = tiny_variant(cls_loss="qfl", quality="joint", box_representation="dirac")
    # 8 x stride anchors of the levels of stride 8 and 16
    anchors = torch.tensor([[-32.0, -32.0, 32.0, 32.0], [16.0, 0.0, 144.0, 128.0]])
    strides = torch.tensor([8.0, 16.0])
    transform = model.box2box_transform
    torch.testing.assert_close(
        decode_boxes(transform, torch.zeros(2, 4), anchors, strides), anchors
    )
    boxes = torch.tensor([[-10.0, -5.0, 20.0, 7.0], [30.0, 10.0, 100.0, 70.0]])
    box_regs = transform.encode(*anchor_points(anchors, strides), boxes)
    torch.testing.assert_close(decode_boxes(transform, box_regs, anchors, strides), boxes)


def test_separate_quality_is_multiplied_into_the_score():
    model = tiny_variant(cls_loss="focal", quality="iou", box_representation="dirac")
    model.eval()
    with torch.no_grad():
        torch.nn.init.constant_(
            model.head.cls_score.bias, 0.0
        )  # scores near 0.5, above the threshold
        torch.nn.init.zeros_(model.head.quality_pred.weight)  # the quality logit is its bias
        torch.nn.init.constant_(model.head.quality_pred.bias, -2.0)
        a = model([{"image": two_image_batch()[0]["image"]}])[0]["instances"]
        torch.nn.init.constant_(model.head.quality_pred.bias, 0.0)
        b = model([{"image": two_image_batch()[0]["image"]}])[0]["instances"]
    assert len(b) > 0
    # the same candidates score sigmoid(q) lower: 2 * sigmoid(-2) of the score at sigmoid(0) = 0.5
    top_a, top_b = a.scores.max(), b.scores.max()
    torch.testing.assert_close(
        top_a / top_b, 2 * torch.sigmoid(torch.tensor(-2.0)), rtol=1e-4, atol=1e-6
    )


def test_yacs_keys_build_the_atss_variant():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from gfl_d2 import add_gfl_config

    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "gfl_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.GFL.CLS_LOSS",
            "focal",
            "MODEL.GFL.QUALITY",
            "centerness",
            "MODEL.GFL.BOX_REPRESENTATION",
            "dirac",
            "MODEL.GFL.OUTPUT_BOX_DISTRIBUTIONS",
            "False",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
            "MODEL.WEIGHTS",
            "",
        ]
    )
    model = build_model(cfg)
    assert isinstance(model, GFL) and model.variant == GFLVariant("focal", "centerness", "dirac")
    assert model.head.has_quality_branch and model.head.bbox_pred.out_channels == 4
    assert model.box2box_transform == DiracBox2BoxTransform(cfg.MODEL.GFL.ANCHOR_SCALE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cls_loss="focal", quality="dgqp"), "the classification loss follows the quality"),
        (
            dict(quality="dgqp", box_representation="dirac"),
            "it needs a DistributionBox2BoxTransform",
        ),
    ],
)
def test_variant_refuses_what_v2_cannot_be(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GFLVariant(**kwargs)


def test_v2_box_normaliser_has_no_floor_of_one():
    assert GFLVariant(quality="dgqp").min_box_normalizer < GFLVariant().min_box_normalizer == 1.0


@pytest.mark.parametrize(
    "quality, loss",
    [
        ("joint", "qfl"),
        ("dgqp", "qfl"),
        ("centerness", "focal"),
        ("iou", "focal"),
        ("none", "focal"),
    ],
)
def test_the_quality_alone_chooses_the_classification_loss(quality, loss):
    """One override per idea: the quality decides QFL or Focal Loss (cls_loss='auto')."""
    variant = GFLVariant(quality=quality)
    assert variant.cls_loss == loss
    assert GFLVariant(cls_loss=loss, quality=quality) == variant
    name = {"qfl": "loss_qfl", "focal": "loss_cls"}[loss]
    assert variant.classification_loss(3, 2.0, 0.25, 2.0).name == name


def test_v2_logs_the_spread_of_its_predicted_quality_at_the_positives():
    cfg = tiny_gfl_config(quality="dgqp")
    torch.manual_seed(0)
    model = instantiate(cfg)
    _, storage = train_step(model, two_image_batch())
    history = storage.histories()
    mean, std = history["dgqp_quality_mean"].latest(), history["dgqp_quality_std"].latest()
    # released initialisation: both 1x1 convs near 0, so every positive's quality is
    # sigmoid(~0) with little spread
    assert abs(mean - 0.5) < 0.05 and 0.0 <= std < 0.05
    torch.manual_seed(0)
    _, storage = train_step(instantiate(tiny_gfl_config()), two_image_batch())
    assert "dgqp_quality_mean" not in storage.histories()  # V1 has no predictor
