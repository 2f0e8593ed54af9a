import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.events import EventStorage

from gfl_d2.modeling.box_coding import integral
from gfl_d2.testing import make_instances, shapes_image, tiny_gfl

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
    data.append({"image": shapes_image([], [], seed=9), "instances": make_instances([], [], (128, 128))})
    model.train()
    with EventStorage():
        losses = model(data)
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_batch_without_any_box():
    model = tiny_gfl()
    data = [{"image": shapes_image([], [], seed=i), "instances": make_instances([], [], (128, 128))} for i in range(2)]
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
    dists = torch.cat([p.permute(0, 2, 3, 1).reshape(len(data), -1, 4 * (n + 1)) for p in preds[1]], 1)
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
    hull = (torch.max(pred_boxes[:, 2:], gt_boxes[:, 2:]) - torch.min(pred_boxes[:, :2], gt_boxes[:, :2])).prod(1)
    giou = inter / union - (hull - union) / hull
    torch.testing.assert_close(losses["loss_bbox"], 2.0 * ((1 - giou) * w).sum() / w.sum().clamp(min=1), rtol=1e-4, atol=1e-6)

    tgt = torch.cat([centers - gt_boxes[:, :2], gt_boxes[:, 2:] - centers], 1) / stride
    tgt = tgt.clamp(0, n - 0.1)
    logp = torch.log_softmax(dists[pos].reshape(-1, 4, n + 1), -1)
    left = tgt.floor().long()
    dfl = -((left + 1 - tgt) * logp.gather(2, left[..., None])[..., 0] + (tgt - left) * logp.gather(2, left[..., None] + 1)[..., 0])
    torch.testing.assert_close(losses["loss_dfl"], 0.25 * (dfl.mean(1) * w).sum() / w.sum().clamp(min=1), rtol=1e-4, atol=1e-6)


def test_inference_output_format():
    model = tiny_gfl()
    model.test_score_thresh = 0.0  # an untrained model: keep everything
    model.test_nms_thresh = 0.99
    model.eval()
    with torch.no_grad():
        out = model([{"image": shapes_image(*SPECS[0], size=(100, 130)), "height": 200, "width": 260},
                     {"image": shapes_image(*SPECS[1], size=(64, 64))}])
    for o, (h, w) in zip(out, [(200, 260), (64, 64)]):
        inst = o["instances"]
        assert inst.image_size == (h, w)
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_box_dists", "pred_box_std"}
        assert len(inst) == 100
        b = inst.pred_boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
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


def test_inf_nan_features():
    model = tiny_gfl()
    model.eval()
    images = model.preprocess_image([{"image": torch.zeros(3, 128, 128)}])
    for value in (float("inf"), float("nan")):
        feats = [torch.full((1, 64, 128 // s, 128 // s), value) for s in (8, 16, 32, 64, 128)]
        with torch.no_grad():
            (det,) = model.forward_inference(images, feats, model.head(feats))
        assert len(det) == 0 or not torch.isfinite(det.scores).all()


def test_full_inference_with_non_finite_head_outputs_returns_no_detections(caplog):
    """A diverged model: the whole forward (postprocessing included) returns nothing and says why."""
    import logging

    from detectron2.utils import logger as d2_logger

    d2_logger._LOG_TIMER.clear()  # the warning is rate-limited per call site
    model = tiny_gfl()
    model.eval()
    head_forward = model.head.forward
    for value in (float("inf"), float("nan"), -float("inf")):
        def broken_head(features, value=value):
            return [[torch.full_like(x, value) for x in per_level] for per_level in head_forward(features)]

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
        data = [{"image": shapes_image(*specs[0], size=size), "instances": make_instances(*specs[0], size)}]
        with EventStorage():
            losses = model(data)
        assert all(torch.isfinite(v) for v in losses.values())


def test_head_of_the_previous_release_still_builds_with_a_warning():
    """GFLHead(reg_max=..., box_representation=..., quality=...) of the previous release: translated, with a warning."""
    import pytest
    from detectron2.config import instantiate

    from gfl_d2.testing import tiny_gfl_config

    cfg = tiny_gfl_config(reg_max=8)
    del cfg.head.box_channels
    cfg.head.reg_max = 8
    with pytest.warns(FutureWarning, match="the head takes its layout"):
        model = instantiate(cfg)
    assert model.head.box_channels == 36 and not model.head.has_quality_branch
    cfg.head.box_representation, cfg.head.quality = "dirac", "iou"
    with pytest.warns(FutureWarning):
        head = instantiate(cfg.head)
    assert head.box_channels == 4 and head.has_quality_branch


def test_loss_qfl_weight_is_a_deprecated_name_of_loss_cls_weight():
    import pytest
    from detectron2.config import instantiate

    from gfl_d2.testing import tiny_gfl_config

    cfg = tiny_gfl_config()
    cfg.loss_qfl_weight = 0.5
    with pytest.warns(FutureWarning, match="loss_cls_weight"):
        model = instantiate(cfg)
    assert model.loss_cls_weight == 0.5
