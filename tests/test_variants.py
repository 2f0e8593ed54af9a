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
from detectron2.config import instantiate
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage
from fvcore.nn import giou_loss
from omegaconf import OmegaConf

from gfl_d2.lazy_config import load_lazy_config
from gfl_d2.modeling import GFL, QFLFCOS, GFLVariant, QFLRetinaNet
from gfl_d2.modeling.box_coding import distance2box
from gfl_d2.testing import ROOT, tiny_gfl_config, train_step, two_image_batch

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
        (dict(box_representation="gaussian"), "box_representation"),
        (dict(box_loss_weighting="iou"), "box_loss_weighting"),
    ],
)
def test_bad_variant_settings_are_refused(kwargs, match):
    cfg = tiny_gfl_config()
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=match):
        instantiate(cfg)


@pytest.mark.parametrize(
    "overrides, box_channels, quality_branch, quality_predictor",
    [
        (["model.reg_max=8"], 36, False, False),
        (["model.box_representation=dirac"], 4, False, False),
        (["model.quality=dgqp"], 68, False, True),
        (["model.quality=iou"], 68, True, False),
    ],
    ids=["n", "dirac", "v2", "iou-branch"],
)
def test_one_model_setting_sets_the_head_layout(
    overrides, box_channels, quality_branch, quality_predictor
):
    """Each idea is set on the model only; the head reads it (by interpolation) and its layout follows."""
    cfg = load_lazy_config(os.path.join(SHAPES, "gfl_R_18_FPN_shapes.py"), overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    head = model.head
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
    cfg.reg_max = 8
    torch.manual_seed(0)
    model = instantiate(cfg)
    assert (
        model.head.box_channels == model.head.bbox_pred.out_channels == 36
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
def test_atss_config_sets_the_model_only(atss_config, gfl_config):
    """ATSS differs from GFL in the model's settings; its head config is GFL's, and the head built has ATSS's layout."""
    atss = load_lazy_config(os.path.join(ROOT, "configs", atss_config))
    gfl = load_lazy_config(os.path.join(ROOT, "configs", gfl_config))
    assert OmegaConf.to_container(atss.model.head) == OmegaConf.to_container(gfl.model.head)
    changed = {k for k in gfl.model if k != "head" and atss.model[k] != gfl.model[k]}
    assert changed == {"quality", "box_representation"}, changed
    head = instantiate(atss.model.head)  # the interpolations read the model's settings
    assert (
        head.bbox_pred.out_channels == 4
        and head.has_quality_branch
        and not head.has_quality_predictor
    )


def test_a_head_setting_that_disagrees_with_the_model_is_refused():
    for key, value, model_value in (
        ("reg_max", 8, 16),
        ("quality", "dgqp", "joint"),
        ("box_representation", "dirac", "distribution"),
    ):
        cfg = tiny_gfl_config()
        setattr(cfg.head, key, value)  # the head's own copy, overridden alone
        message = (
            f"the head was built with {key}={value!r} but the model has {key}={model_value!r}: "
            f"set model.{key} only"
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            instantiate(cfg)


def test_head_refuses_a_quality_its_box_outputs_cannot_give():
    cfg = tiny_gfl_config()
    cfg.quality, cfg.box_representation = "dgqp", "dirac"
    with pytest.raises(ValueError, match="needs box_representation='distribution'"):
        instantiate(cfg)
    cfg = tiny_gfl_config(reg_max=2)
    cfg.quality = "dgqp"  # the top 4 of 3 bins
    with pytest.raises(
        ValueError, match="reads the top 4 of each edge's n \\+ 1 bins, but reg_max=2 gives 3"
    ):
        instantiate(cfg)
    cfg = tiny_gfl_config()
    cfg.quality = "centre"
    with pytest.raises(ValueError, match="quality must be one of"):
        instantiate(cfg)


def tiny_variant(**kwargs):
    cfg = tiny_gfl_config()
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return instantiate(cfg)


def decode_boxes(transform, box_regs, anchors):
    """(R, D) box outputs and (R, 4) anchors -> (R, 4) boxes in image coordinates."""
    centers, strides = transform.centers_and_strides(anchors)
    return distance2box(centers, transform.decode(box_regs).distances * strides)


def labelled(model, data):
    images = model.preprocess_image(data)
    features = [model.backbone(images.tensor)[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    gt_labels, gt_boxes = model.label_anchors(anchors, [x["instances"] for x in data])
    return features, anchors, gt_labels, gt_boxes


def stride_boxes(anchors):
    """FCOS's anchor representation (a stride-sized box) at the same centres as GFL's 8 x stride anchors."""
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
    all_anchors = Boxes.cat(anchors).tensor
    pred = torch.stack(
        [decode_boxes(model.box2box_transform, d, all_anchors) for d in torch.cat(deltas, dim=1)]
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
        decode_boxes(model.box2box_transform, all_deltas[0], anchors_cat), pred[0]
    )


def test_untrained_dirac_variant_predicts_its_anchors():
    model = tiny_variant(cls_loss="qfl", quality="joint", box_representation="dirac")
    anchors = torch.tensor([[-32.0, -32.0, 32.0, 32.0], [16.0, 0.0, 144.0, 128.0]])
    torch.testing.assert_close(
        decode_boxes(model.box2box_transform, torch.zeros(2, 4), anchors), anchors
    )
    boxes = torch.tensor([[-10.0, -5.0, 20.0, 7.0], [30.0, 10.0, 100.0, 70.0]])
    box_regs = model.box2box_transform.encode(anchors, boxes)
    torch.testing.assert_close(decode_boxes(model.box2box_transform, box_regs, anchors), boxes)


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cls_loss="focal", quality="dgqp"), "the classification loss follows the quality"),
        (
            dict(quality="dgqp", box_representation="dirac"),
            "needs box_representation='distribution'",
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
    cfg = tiny_gfl_config()
    cfg.quality = "dgqp"
    torch.manual_seed(0)
    model = instantiate(cfg)
    _, storage = train_step(model, two_image_batch())
    history = storage.histories()
    mean, std = history["dgqp_quality_mean"].latest(), history["dgqp_quality_std"].latest()
    # released initialisation: both 1x1 convs near 0, so every positive's quality is sigmoid(~0) with little spread
    assert abs(mean - 0.5) < 0.05 and 0.0 <= std < 0.05
    torch.manual_seed(0)
    _, storage = train_step(instantiate(tiny_gfl_config()), two_image_batch())
    assert "dgqp_quality_mean" not in storage.histories()  # V1 has no predictor
