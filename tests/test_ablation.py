"""The paper's ablation variants: each trains and infers; their targets and losses are the baselines' own."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss

from detectron2.config import instantiate
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from gfl_d2.engine import load_lazy_config
from gfl_d2.modeling import GFL, QFLFCOS, QFLRetinaNet, GFLVariant
from gfl_d2.modeling.box_coding import distance2box
from helpers import make_instances, shapes_image, tiny_gfl_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("ablation", os.path.join(ROOT, "tools", "ablation.py"))
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)

BOXES = [[10, 12, 60, 70], [70, 20, 120, 60], [30, 80, 52, 100]]
CLASSES = [0, 1, 2]


def batch(size=(128, 128)):
    return [
        {"image": shapes_image(BOXES, CLASSES, size=size, seed=0), "instances": make_instances(BOXES, CLASSES, size)},
        {"image": shapes_image(BOXES[:1], CLASSES[:1], size=size, seed=1),
         "instances": make_instances(BOXES[:1], CLASSES[:1], size)},
    ]


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
def test_every_variant_trains_a_step_and_infers(name):
    config, overrides, _ = ablation.VARIANTS[name]
    cfg = load_lazy_config(os.path.join(ROOT, config), overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    with EventStorage():
        losses = model(batch())
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    # every parameter takes part, so DDP needs no find_unused_parameters
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    model.eval()
    with torch.no_grad():
        out = model([{"image": x["image"]} for x in batch()])
    inst = out[0]["instances"]
    assert inst.image_size == (128, 128) and inst.pred_boxes.tensor.shape[1] == 4
    assert len(inst.scores) == len(inst.pred_classes)


def test_variant_settings_reach_the_model():
    def load(name):
        config, overrides, _ = ablation.VARIANTS[name]
        return instantiate(load_lazy_config(os.path.join(ROOT, config), overrides).model)

    atss, gfl = load("ATSS"), load("GFL")
    assert atss.variant == GFLVariant("focal", "centerness", "dirac", "centerness")
    assert gfl.variant == GFLVariant("qfl", "joint", "distribution", "score")
    assert atss.head.bbox_pred.out_channels == 4 and gfl.head.bbox_pred.out_channels == 68
    assert load("GFL n=8").head.bbox_pred.out_channels == 36
    assert load("GFL Δ=0.5").box2box_transform.bin_width == 0.5
    assert load("GFL β=0").cls_loss.beta == 0
    assert type(load("RetinaNet+QFL")) is QFLRetinaNet and type(load("FCOS+QFL")) is QFLFCOS
    # identical backbones everywhere
    shapes = {n: sum(p.numel() for p in load(n).backbone.parameters()) for n in ("RetinaNet", "FCOS", "ATSS", "GFL")}
    assert len(set(shapes.values())) == 1, shapes


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cls_loss="qfl", quality="centerness"), "joint quality is trained by QFL"),
        (dict(cls_loss="focal", quality="joint"), "joint quality is trained by QFL"),
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


def test_head_layout_must_be_the_one_the_model_reads():
    cfg = tiny_gfl_config()
    cfg.cls_loss, cfg.quality = "focal", "centerness"  # the head still has no quality branch
    with pytest.raises(ValueError, match="needs a separate quality branch: set head.quality_branch=True"):
        instantiate(cfg)
    cfg = tiny_gfl_config()
    cfg.box_representation = "dirac"  # the head still predicts 68 distribution logits
    with pytest.raises(ValueError, match="predicts 68 box channels, but box_representation='dirac' reads 4"):
        instantiate(cfg)
    cfg = tiny_gfl_config()
    cfg.reg_max = 8
    with pytest.raises(ValueError, match="set head.box_channels=36"):
        instantiate(cfg)


def tiny_variant(**kwargs):
    cfg = tiny_gfl_config()
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    cfg.head.quality_branch = kwargs.get("quality") in ("centerness", "iou")
    if kwargs.get("box_representation") == "dirac":
        cfg.head.box_channels = 4
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
    cfg = load_lazy_config(os.path.join(ROOT, "configs/Synthetic/fcos_R_18_FPN_shapes.py"))
    return instantiate(cfg.model)


def test_atss_centerness_target_equals_fcos_on_the_same_anchors():
    model = tiny_variant(cls_loss="focal", quality="centerness", box_representation="dirac")
    fcos = fcos_model()
    data = batch()
    with torch.no_grad():
        features, anchors, gt_labels, gt_boxes = labelled(model, data)
    fcos_anchors = stride_boxes(anchors)
    assert torch.equal(Boxes.cat(anchors).get_centers(), Boxes.cat(fcos_anchors).get_centers())
    strides = torch.cat([torch.full((len(a),), float(s)) for a, s in zip(fcos_anchors, (8, 16, 32, 64, 128))])
    torch.testing.assert_close(Boxes.cat(fcos_anchors).tensor[:, 2] - Boxes.cat(fcos_anchors).tensor[:, 0], strides)
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
    pred = torch.stack([decode_boxes(model.box2box_transform, d, all_anchors) for d in torch.cat(deltas, dim=1)])
    giou = giou_loss(pred[pos], torch.stack(gt_boxes)[pos], reduction="none")
    expected = (giou * theirs[pos]).sum() / theirs[pos].sum() * model.loss_bbox_weight
    torch.testing.assert_close(losses["loss_bbox"], expected, rtol=1e-4, atol=1e-5)


def test_dirac_variant_is_plain_giou_regression():
    model = tiny_variant(cls_loss="focal", quality="none", box_representation="dirac", box_loss_weighting="none")
    assert model.head.bbox_pred.out_channels == 4
    data = batch()
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
    pred = torch.stack([linear.apply_deltas(d + 4.0, fcos_anchors) for d in all_deltas])  # (N, R, 4) pixels
    expected = giou_loss(pred[pos], torch.stack(gt_boxes)[pos], reduction="mean") * model.loss_bbox_weight
    torch.testing.assert_close(losses["loss_bbox"], expected, rtol=1e-4, atol=1e-5)

    # inference decodes the same boxes
    anchors_cat = Boxes.cat(anchors).tensor
    torch.testing.assert_close(decode_boxes(model.box2box_transform, all_deltas[0], anchors_cat), pred[0])


def test_untrained_dirac_variant_predicts_its_anchors():
    model = tiny_variant(cls_loss="qfl", quality="joint", box_representation="dirac")
    anchors = torch.tensor([[-32.0, -32.0, 32.0, 32.0], [16.0, 0.0, 144.0, 128.0]])
    torch.testing.assert_close(decode_boxes(model.box2box_transform, torch.zeros(2, 4), anchors), anchors)
    boxes = torch.tensor([[-10.0, -5.0, 20.0, 7.0], [30.0, 10.0, 100.0, 70.0]])
    box_regs = model.box2box_transform.encode(anchors, boxes)
    torch.testing.assert_close(decode_boxes(model.box2box_transform, box_regs, anchors), boxes)


def test_dirac_variant_detects_without_distribution_outputs():
    model = tiny_variant(cls_loss="qfl", quality="joint", box_representation="dirac")
    model.eval()
    with torch.no_grad():
        inst = model([{"image": batch()[0]["image"]}])[0]["instances"]
    assert not inst.has("pred_box_dists") and not inst.has("pred_box_std")


def test_separate_quality_is_multiplied_into_the_score():
    model = tiny_variant(cls_loss="focal", quality="iou", box_representation="dirac")
    model.eval()
    with torch.no_grad():
        torch.nn.init.constant_(model.head.cls_score.bias, 0.0)  # scores near 0.5, above the threshold
        torch.nn.init.zeros_(model.head.quality_pred.weight)  # the quality logit is its bias
        torch.nn.init.constant_(model.head.quality_pred.bias, -2.0)
        a = model([{"image": batch()[0]["image"]}])[0]["instances"]
        torch.nn.init.constant_(model.head.quality_pred.bias, 0.0)
        b = model([{"image": batch()[0]["image"]}])[0]["instances"]
    assert len(b) > 0
    # the same candidates score sigmoid(q) lower: 2 * sigmoid(-2) of the score at sigmoid(0) = 0.5
    top_a, top_b = a.scores.max(), b.scores.max()
    torch.testing.assert_close(top_a / top_b, 2 * torch.sigmoid(torch.tensor(-2.0)), rtol=1e-4, atol=1e-6)


def perfect_deltas(model, anchors, gt_boxes, n):
    """Per-level box predictions that reproduce each anchor's matched box exactly."""
    all_anchors = Boxes.cat(anchors).tensor
    deltas = torch.stack([model.box2box_transform.get_deltas(all_anchors, g) for g in gt_boxes])  # (N, R, 4)
    return list(deltas.split([len(a) for a in anchors], dim=1))


@pytest.mark.parametrize("config", ["retinanet", "fcos"])
def test_qfl_drop_in_equals_focal_loss_without_alpha_when_boxes_are_perfect(config):
    """With IoU = 1 at every positive, QFL's target is the hard label and |y - σ|^2 is FL's (1 - p_t)^2."""
    base = load_lazy_config(os.path.join(ROOT, f"configs/Synthetic/{config}_R_18_FPN_shapes.py")).model
    base.focal_loss_alpha = -1  # QFL has no α
    qfl = load_lazy_config(os.path.join(ROOT, f"configs/Synthetic/{config}_qfl_R_18_FPN_shapes.py")).model
    qfl.focal_loss_alpha = -1
    torch.manual_seed(0)
    base, qfl = instantiate(base), instantiate(qfl)
    data = batch()
    with torch.no_grad():
        images = base.preprocess_image(data)
        features = [base.backbone(images.tensor)[f] for f in base.head_in_features]
        anchors = base.anchor_generator(features)
        gt_labels, gt_boxes = base.label_anchors(anchors, [x["instances"] for x in data])
    n = len(data)
    logits = [torch.randn(n, len(a), 5) for a in anchors]
    deltas = perfect_deltas(base, anchors, gt_boxes, n)
    extra = [[torch.randn(n, len(a), 1) for a in anchors]] if config == "fcos" else []
    with EventStorage():
        ref = base.losses(anchors, logits, gt_labels, deltas, gt_boxes, *extra)
        ours = qfl.losses(anchors, logits, gt_labels, deltas, gt_boxes, *extra)
    assert set(ours) == set(ref)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-4, atol=1e-6)

    # with imperfect boxes only the classification term changes
    deltas = [d + 0.3 * torch.randn_like(d) for d in deltas]
    with EventStorage():
        ref = base.losses(anchors, logits, gt_labels, deltas, gt_boxes, *extra)
        ours = qfl.losses(anchors, logits, gt_labels, deltas, gt_boxes, *extra)
    cls_key = qfl.cls_loss_key
    for key in ref:
        if key != cls_key:
            torch.testing.assert_close(ours[key], ref[key])
    assert not torch.allclose(ours[cls_key], ref[cls_key])


def test_yacs_keys_build_the_atss_variant():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from gfl_d2 import add_gfl_config

    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "gfl_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.GFL.CLS_LOSS", "focal", "MODEL.GFL.QUALITY", "centerness",
                         "MODEL.GFL.BOX_REPRESENTATION", "dirac", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18",
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    assert isinstance(model, GFL) and model.variant == GFLVariant("focal", "centerness", "dirac")
    assert model.head.has_quality_branch and model.head.bbox_pred.out_channels == 4


def test_ablation_tool_runs_saves_and_resumes(tmp_path):
    out = tmp_path / "abl"
    datasets = tmp_path / "datasets"
    cmd = [sys.executable, "tools/ablation.py", "--tables", "delta", "--variants", "GFL", "ATSS",
           "--iters", "4", "--batch", "2", "--sweep-seeds", "0", "--output", str(out), "--timing-images", "2",
           "--timing-rounds", "1", "--opts", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
           "dataloader.train.dataset.names.num_images=8", "dataloader.test.dataset.names.num_images=4"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=str(datasets))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 runs, 0 already done" in proc.stdout
    for name in ("GFL", "ATSS"):
        assert (out / name / "seed0" / "result.json").is_file()
    table = (out / "ablation.md").read_text()
    assert "| GFL |" in table and "| 1 | 1.00 |" in table  # one seed; GFL's time relative to itself
    assert "GFL Δ=2 | … |" in table  # rows not run are shown as missing

    # a second invocation finds both runs done and retrains nothing
    proc = subprocess.run(cmd + ["--skip-timing"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "2 runs, 2 already done, 0 to go" in proc.stdout, proc.stdout[-2000:]
    assert "training" not in proc.stdout


def test_yacs_builds_qfl_retinanet():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from gfl_d2 import add_gfl_config

    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "QFLRetinaNet", "MODEL.RETINANET.QFL_BETA", "1.5",
                         "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone",
                         "MODEL.RESNETS.OUT_FEATURES", "['res3', 'res4', 'res5']", "MODEL.FPN.IN_FEATURES",
                         "['res3', 'res4', 'res5']"])
    model = build_model(cfg)
    assert isinstance(model, QFLRetinaNet) and model.qfl_beta == 1.5
