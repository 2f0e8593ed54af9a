import pytest
import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from gfl_d2.modeling.box_coding import integral
from gfl_d2.testing import (
    make_instances,
    shapes_image,
    tiny_gfl,
    tiny_gfl_config,
    train_step,
    two_image_batch,
)

SPECS = [
    ([[10, 12, 60, 70], [70, 20, 120, 60]], [0, 1]),
    ([[30, 30, 100, 110]], [2]),
    ([[5, 80, 40, 120], [60, 60, 90, 90]], [1, 0]),
    ([[20, 20, 50, 50]], [2]),
]


def training_batch(specs=SPECS, size=(128, 128)):
    return [
        {"image": shapes_image(b, c, size=size, seed=i), "instances": make_instances(b, c, size)}
        for i, (b, c) in enumerate(specs)
    ]


def test_overfits_a_few_images_and_detects_them():
    model = tiny_gfl()
    data = training_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    history = []
    with EventStorage():
        for _ in range(60):
            losses = model(data)
            assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl"}
            loss = sum(losses.values())
            assert torch.isfinite(loss)
            history.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert history[-1] < 0.5 * history[0], history
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": d["image"]} for d in data])
    for d, out in zip(data, outputs):
        det = out["instances"]
        det = det[det.scores > 0.3]
        gt = d["instances"]
        ious = pairwise_iou(gt.gt_boxes, det.pred_boxes)  # (M, D)
        same_class = gt.gt_classes[:, None] == det.pred_classes[None, :]
        assert ((ious > 0.5) & same_class).any(dim=1).all(), (gt, det)


def test_image_without_boxes_in_batch_trains_without_nan():
    model = tiny_gfl()
    data = training_batch(SPECS[:2])
    data.append(
        {"image": shapes_image([], [], seed=9), "instances": make_instances([], [], (128, 128))}
    )
    model.train()
    with EventStorage():
        losses = model(data)
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_batch_without_any_box():
    model = tiny_gfl()
    data = [
        {"image": shapes_image([], [], seed=i), "instances": make_instances([], [], (128, 128))}
        for i in range(2)
    ]
    model.train()
    with EventStorage():
        losses = model(data)
        sum(losses.values()).backward()
    assert losses["loss_bbox"].item() == 0 and losses["loss_dfl"].item() == 0
    assert torch.isfinite(losses["loss_qfl"]) and losses["loss_qfl"].item() > 0
    # every parameter still takes part in the graph (needed by DDP)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_losses_follow_the_spec_normalisation():
    """Recompute the three losses from the head outputs with the spec's formulas."""
    model = tiny_gfl()
    model.train()
    data = training_batch()
    images = model.preprocess_image(data)
    feats = model.backbone(images.tensor)
    feats = [feats[f] for f in model.head_in_features]
    preds = model.head(feats)
    gt_instances = [d["instances"] for d in data]
    with EventStorage():
        losses = model.forward_training(images, feats, preds, gt_instances)

    n = model.box2box_transform.reg_max
    logits = torch.cat([p.permute(0, 2, 3, 1).reshape(len(data), -1, 3) for p in preds[0]], 1)
    dists = torch.cat(
        [p.permute(0, 2, 3, 1).reshape(len(data), -1, 4 * (n + 1)) for p in preds[1]], 1
    )
    anchors = Boxes.cat(model.anchor_generator(feats)).tensor
    labels, boxes = model.label_anchors(model.anchor_generator(feats), gt_instances)
    labels, boxes = torch.stack(labels), torch.stack(boxes)
    pos = labels < 3
    num_pos = pos.sum().float()
    stride = ((anchors[:, 2] - anchors[:, 0]) / 8)[None].expand_as(labels)[pos][:, None]
    centers = ((anchors[:, :2] + anchors[:, 2:]) / 2)[None].expand(len(data), -1, -1)[pos]
    d = integral(dists[pos]) * stride
    pred_boxes = torch.cat([centers - d[:, :2], centers + d[:, 2:]], 1)
    gt_boxes = boxes[pos]
    iou = torch.diag(pairwise_iou(Boxes(pred_boxes.detach()), Boxes(gt_boxes)))
    target = torch.zeros_like(logits)
    target[pos] = F.one_hot(labels[pos], 3).float() * iou[:, None]
    s = logits.sigmoid()
    qfl = -((target - s).abs() ** 2) * (target * s.log() + (1 - target) * (1 - s).log())
    torch.testing.assert_close(losses["loss_qfl"], qfl.sum() / num_pos, rtol=1e-4, atol=1e-6)

    w = logits[pos].detach().sigmoid().max(1).values
    # GIoU written out (scale invariant, so pixels are as good as strides here)
    lt = torch.max(pred_boxes[:, :2], gt_boxes[:, :2])
    rb = torch.min(pred_boxes[:, 2:], gt_boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    union = area(pred_boxes) + area(gt_boxes) - inter
    hull = (
        torch.max(pred_boxes[:, 2:], gt_boxes[:, 2:])
        - torch.min(pred_boxes[:, :2], gt_boxes[:, :2])
    ).prod(1)
    giou = inter / union - (hull - union) / hull
    torch.testing.assert_close(
        losses["loss_bbox"],
        2.0 * ((1 - giou) * w).sum() / w.sum().clamp(min=1),
        rtol=1e-4,
        atol=1e-6,
    )

    tgt = torch.cat([centers - gt_boxes[:, :2], gt_boxes[:, 2:] - centers], 1) / stride
    tgt = tgt.clamp(0, n - 0.1)
    logp = torch.log_softmax(dists[pos].reshape(-1, 4, n + 1), -1)
    left = tgt.floor().long()
    dfl = -(
        (left + 1 - tgt) * logp.gather(2, left[..., None])[..., 0]
        + (tgt - left) * logp.gather(2, left[..., None] + 1)[..., 0]
    )
    torch.testing.assert_close(
        losses["loss_dfl"],
        0.25 * (dfl.mean(1) * w).sum() / w.sum().clamp(min=1),
        rtol=1e-4,
        atol=1e-6,
    )


def test_inference_output_format():
    model = tiny_gfl()
    model.test_score_thresh = 0.0  # an untrained model: keep everything
    model.test_nms_thresh = 0.99
    model.eval()
    with torch.no_grad():
        out = model(
            [
                {"image": shapes_image(*SPECS[0], size=(100, 130)), "height": 200, "width": 260},
                {"image": shapes_image(*SPECS[1], size=(64, 64))},
            ]
        )
    for o, (h, w) in zip(out, [(200, 260), (64, 64)]):
        inst = o["instances"]
        assert inst.image_size == (h, w)
        assert set(inst.get_fields()) == {
            "pred_boxes",
            "scores",
            "pred_classes",
            "pred_box_dists",
            "pred_box_std",
        }
        assert len(inst) == 100
        b = inst.pred_boxes.tensor
        assert (
            (b[:, 0] >= 0).all()
            and (b[:, 1] >= 0).all()
            and (b[:, 2] <= w).all()
            and (b[:, 3] <= h).all()
        )
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert inst.pred_classes.dtype == torch.long and inst.pred_classes.max() < 3


def test_box_distributions_can_be_turned_off():
    model = tiny_gfl()
    model.test_score_thresh = 0.0
    model.output_box_distributions = False
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": shapes_image(*SPECS[0]), "height": 64, "width": 64}])
    assert set(out["instances"].get_fields()) == {"pred_boxes", "scores", "pred_classes"}


def test_inference_thresholds_and_limits():
    model = tiny_gfl()
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": shapes_image(*SPECS[0])}])
    # the untrained classifier sits at the 0.01 prior: nothing passes 0.05
    assert len(out["instances"]) == 0
    model.test_score_thresh = 0.0
    model.max_detections_per_image = 7
    with torch.no_grad():
        (out,) = model([{"image": shapes_image(*SPECS[0])}])
    assert len(out["instances"]) == 7


@pytest.mark.parametrize("representation", ["distribution", "dirac"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_non_finite_boxes_are_dropped_and_the_finite_ones_kept(representation, value):
    """
    Confident candidates on every level, the box outputs of P3-P5 poisoned
    with Inf/NaN: the detections must be exactly those of the same candidates
    with P3-P5 filtered out by their scores (none with a non-finite box,
    and none of the finite ones lost).
    """
    cfg = tiny_gfl_config(box_representation=representation)
    torch.manual_seed(0)
    model = instantiate(cfg).eval()
    images = model.preprocess_image([{"image": shapes_image(*SPECS[0])}])
    with torch.no_grad():
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        cls, box = model.head(features)
        cls = [c + 6.0 for c in cls]  # every (location, class) above the score threshold
        poisoned = [torch.full_like(b, value) if level < 3 else b for level, b in enumerate(box)]
        muted = [torch.full_like(c, -30.0) if level < 3 else c for level, c in enumerate(cls)]
        (got,) = model.forward_inference(images, features, [cls, poisoned])
        (expected,) = model.forward_inference(images, features, [muted, box])
    assert len(expected) > 0
    assert torch.isfinite(got.pred_boxes.tensor).all()
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


def test_full_inference_with_non_finite_head_outputs_returns_no_detections(caplog):
    """A diverged model: the whole forward (postprocessing too) returns nothing and says why."""
    import logging

    from detectron2.utils import logger as d2_logger

    d2_logger._LOG_TIMER.clear()  # the warning is rate-limited per call site
    model = tiny_gfl()
    model.eval()
    head_forward = model.head.forward
    for value in (float("inf"), float("nan"), -float("inf")):

        def broken_head(features, value=value):
            return [
                [torch.full_like(x, value) for x in per_level]
                for per_level in head_forward(features)
            ]

        model.head.forward = broken_head
        model.test_score_thresh = -1.0
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="gfl_d2.modeling.meta_arch"):
            (out,) = model([{"image": torch.rand(3, 96, 128) * 255, "height": 192, "width": 256}])
        assert len(out["instances"]) == 0, value
        assert out["instances"].pred_box_std.shape == (0, 4)
    assert any("non-finite boxes" in r.getMessage() for r in caplog.records)


def test_cpu_autocast_training_and_inference():
    model = tiny_gfl()
    data = training_batch(SPECS[:2])
    model.train()
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(data)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    model.test_score_thresh = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = model([{"image": data[0]["image"]}])
    assert out["instances"].pred_boxes.tensor.dtype == torch.float32
    assert len(out["instances"]) > 0


def test_odd_image_sizes_align_anchors_with_features():
    model = tiny_gfl()
    model.train()
    specs = [([[5, 5, 40, 50]], [1])]
    for size in [(70, 90), (33, 47), (160, 96)]:
        data = [
            {
                "image": shapes_image(*specs[0], size=size),
                "instances": make_instances(*specs[0], size),
            }
        ]
        with EventStorage():
            losses = model(data)
        assert all(torch.isfinite(v) for v in losses.values())


# ------------------------------------------------------------------------------ anchors, strides
def test_strides_are_the_anchor_generators_not_the_anchor_sizes():
    """Anchors of 4 x stride (not GFL's 8): the levels' strides are still the generator's."""
    cfg = tiny_gfl_config()
    cfg.anchor_generator.sizes = [[32], [64], [128], [256], [512]]
    torch.manual_seed(0)
    model = instantiate(cfg)
    images = model.preprocess_image([{"image": shapes_image(*SPECS[0])}])
    features = model.backbone(images.tensor)
    anchors = model.anchor_generator([features[f] for f in model.head_in_features])
    strides = model.level_strides(anchors)
    expected = torch.cat(
        [torch.full((len(a),), float(s)) for a, s in zip(anchors, [8, 16, 32, 64, 128])]
    )
    assert strides.dtype == torch.float32
    torch.testing.assert_close(strides, expected)
    losses, _ = train_step(model, training_batch(SPECS[:2]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_anchor_generator_must_fit_the_levels():
    cfg = tiny_gfl_config()
    cfg.anchor_generator.strides = [8, 16, 32, 64, 64]
    with pytest.raises(ValueError, match="differ from the strides of the head's features"):
        instantiate(cfg)
    cfg = tiny_gfl_config()
    cfg.anchor_generator.aspect_ratios = [0.5, 1.0]
    with pytest.raises(ValueError, match="exactly one anchor per location"):
        instantiate(cfg)
    for part in ("anchor_generator", "anchor_matcher"):  # no defaults: the config says which
        cfg = tiny_gfl_config()
        del cfg[part]
        with pytest.raises(TypeError, match=part):
            instantiate(cfg)


# ---------------------------------------------------------------- GFL V2: the fused score
def test_qfl_trains_the_box_distributions_through_the_predictor():
    """V2's QFL alone gives the regression branch a gradient; V1's gives it none."""
    data = two_image_batch()
    for quality, expected in (("dgqp", True), ("joint", False)):
        cfg = tiny_gfl_config(quality=quality)
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
    """
    Each positive's GIoU/DFL weight is the detached max over classes of
    sigmoid(cls) * sigmoid(quality).
    """
    cfg = tiny_gfl_config(quality="dgqp")
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
        cls, _, quality = model._transpose_dense_predictions(
            model.head(features), model.head.output_channels
        )
        labels, _ = model.label_anchors(
            model.anchor_generator(features), [d["instances"] for d in data]
        )
    labels = torch.stack(labels)
    positive = (labels >= 0) & (labels != model.num_classes)
    fused = torch.cat(cls, dim=1).sigmoid() * torch.cat(quality, dim=1).sigmoid()
    expected = fused[positive].max(dim=1).values.detach()
    assert len(expected) > 0 and expected.std() > 1e-4  # the quality varies between the positives
    torch.testing.assert_close(seen[0], expected)


def test_inference_scores_are_the_product_and_the_quality_is_in_the_outputs():
    cfg = tiny_gfl_config(quality="dgqp")
    torch.manual_seed(0)
    v2 = instantiate(cfg).eval()
    cfg.head.quality = "joint"
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
    cfg = tiny_gfl_config(quality="dgqp")
    torch.manual_seed(0)
    model = instantiate(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, _ = train_step(model, two_image_batch())
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    assert torch.isfinite(model.head.dgqp.layers[0].weight.grad).all()
