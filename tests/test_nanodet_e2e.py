"""
gfl-d2's NanoDet-Plus parts against NanoDet's own model code (RangiLyu/nanodet),
built from its released configs: ShuffleNetV2 + GhostPAN with NanoDet's
weights renamed by gfl_d2.convert_nanodet give NanoDet's features, the model
its outputs and detections, and NanoDetPlus's training step (the aux head's
assignment, both heads' losses) NanoDet's losses and gradients.

Skipped unless ``NANODET_SRC`` points to a NanoDet source tree
(tools/gfl_studies/nanodet_runtime.py; never a dependency of gfl-d2).
"""

import pytest
import torch

from gfl_d2.convert_nanodet import rename_nanodet_key
from gfl_d2.modeling.ghost_pan import GhostPAN
from gfl_d2.modeling.shufflenet import ShuffleNetV2
from gfl_studies.nanodet_runtime import CONFIGS, build_nanodet, nanodet_available

pytestmark = pytest.mark.skipif(
    not nanodet_available(), reason="NANODET_SRC (a NanoDet source tree) is not set"
)


def off_default_statistics(model, seed=0):
    """BatchNorm statistics and biases off their initial values, so that every one counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shufflenet_and_ghost_pan_give_nanodets_features(name):
    config, size, channels = CONFIGS[name]
    nanodet, _ = build_nanodet(config)
    nanodet.eval()
    off_default_statistics(nanodet)
    state = {
        rename_nanodet_key(k): v
        for k, v in nanodet.state_dict().items()
        if k.startswith(("backbone.", "fpn.")) and not k.endswith("num_batches_tracked")
    }
    ours = GhostPAN(
        ShuffleNetV2(size, activation="LeakyReLU"), ["stage2", "stage3", "stage4"], channels
    ).eval()
    expected = {
        "backbone." + k: v.shape
        for k, v in ours.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert {k: v.shape for k, v in state.items()} == expected
    torch.nn.Module.load_state_dict(torch.nn.ModuleDict({"backbone": ours}), state, strict=False)
    x = torch.randn(2, 3, 320, 416, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = nanodet.fpn(nanodet.backbone(x)), ours(x)
    assert list(got) == ["p3", "p4", "p5", "p6"]
    for w, (level, g) in zip(want, got.items()):
        # the same operations in the same order: equal to float32 rounding of values ~1
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def nanodet_plus_in_gfl(size, channels, num_classes=80):
    """gfl-d2's GFL with NanoDet-Plus's backbone, neck and head, and its inference settings."""
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    from gfl_d2.modeling import GFL, ATSSMatcher, DistributionBox2BoxTransform
    from gfl_d2.modeling.nanodet_head import NanoDetPlusHead

    backbone = GhostPAN(
        ShuffleNetV2(size, activation="LeakyReLU"), ["stage2", "stage3", "stage4"], channels
    )
    shapes = backbone.output_shape()
    head = NanoDetPlusHead(
        input_shape=[shapes[f] for f in ("p3", "p4", "p5", "p6")],
        num_classes=num_classes,
        box2box_transform=DistributionBox2BoxTransform(reg_max=7),
        feat_channels=channels,
    )
    strides = [8, 16, 32, 64]
    return GFL(
        backbone=backbone,
        head=head,
        head_in_features=["p3", "p4", "p5", "p6"],
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[5 * s] for s in strides], aspect_ratios=[1.0], strides=strides, offset=0.0
        ),
        anchor_matcher=ATSSMatcher(topk=9),
        num_classes=num_classes,
        test_topk_candidates=10**6,  # NanoDet keeps every candidate over the threshold
        output_box_distributions=False,
        size_divisibility=32,
        pixel_mean=[103.53, 116.28, 123.675],
        pixel_std=[57.375, 57.12, 58.395],
        input_format="BGR",
    ).eval()


def structured_image(h, w, generator):
    """A grey BGR image with a dozen flat rectangles and some noise: features that vary."""
    image = torch.full((3, h, w), 114.0)
    for _ in range(12):
        y0, x0 = torch.randint(0, h - 40, (2,), generator=generator).tolist()
        hh, ww = torch.randint(20, 120, (2,), generator=generator).tolist()
        image[:, y0 : y0 + hh, x0 : x0 + ww] = torch.randint(0, 256, (3, 1, 1), generator=generator)
    return (image + 8 * torch.randn(image.shape, generator=generator)).clamp(0, 255)


def trained_like(nanodet, generator):
    """
    Head weights with confident, varied scores: He-scaled towers (NanoDet initialises them
    at std 0.01, which makes every location score alike) and outputs.
    """
    with torch.no_grad():
        for m in nanodet.head.cls_convs.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=generator)
                    * (2 / m.weight[0].numel()) ** 0.5
                )
        for conv in nanodet.head.gfl_cls:
            conv.weight.copy_(
                torch.randn(conv.weight.shape, generator=generator) / conv.weight[0].numel() ** 0.5
            )
            conv.bias[:80].fill_(-3.0)


def canonical(boxes, scores, classes):
    """Detections ordered by class and box (0.01 px): equal-score ties in any order compare."""
    key = torch.cat([classes[:, None].double(), (boxes.double() / 0.01).round()], dim=1).tolist()
    order = sorted(range(len(key)), key=key.__getitem__)
    return boxes[order], scores[order], classes[order]


@pytest.mark.parametrize("name", ["m 320", "m-1.5x 416"])
def test_nanodet_plus_gives_nanodets_outputs_and_detections(name):
    config, size, channels = CONFIGS[name]
    torch.manual_seed(0)
    nanodet, cfg = build_nanodet(config)
    nanodet.eval()
    off_default_statistics(nanodet)
    g = torch.Generator().manual_seed(2)
    trained_like(nanodet, g)
    state = {
        rename_nanodet_key(k): v
        for k, v in nanodet.state_dict().items()
        if k.startswith(("backbone.", "fpn.", "head."))
        and not k.endswith(("num_batches_tracked", "distribution_project.project"))
    }
    model = nanodet_plus_in_gfl(size, channels)
    incompatible = model.load_state_dict(state, strict=False)
    assert not incompatible.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in incompatible.missing_keys)

    w, h = cfg.data.val.input_size
    image = structured_image(h, w, g)  # BGR at NanoDet's input size
    mean = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    std = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)
    normalized = ((image - mean) / std)[None]
    with torch.no_grad():
        raw = nanodet(normalized)  # (1, points, C + 32), levels concatenated row-major
        features = model.backbone(normalized)
        predictions = model.head([features[f] for f in model.head_in_features])
        ours = torch.cat(
            [torch.cat([c, r], dim=1).flatten(2) for c, r in zip(*predictions)], dim=2
        ).permute(0, 2, 1)
        # raw outputs (class logits, then the bins), float32 rounding of values of order 10
        torch.testing.assert_close(ours, raw, rtol=1e-5, atol=1e-4)
        ((bboxes, labels),) = nanodet.head.get_bboxes(
            *raw.split([80, 32], dim=-1), {"img": normalized}
        )
        dets = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    assert len(dets) == len(labels) == 100
    want = canonical(bboxes[:, :4], bboxes[:, 4], labels)
    got = canonical(dets.pred_boxes.tensor, dets.scores, dets.pred_classes)
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-3)


def test_checkpoint_saved_by_nanodet_converts_with_the_tool_and_gives_its_detections(tmp_path):
    """
    A file as NanoDet's ``save_model`` writes it (``nanodet/util/check_point.py``: epoch,
    iter and the bare state dict; the function itself sits behind Lightning's
    ``rank_zero_only``, stood in for here), converted as the README says.
    """
    import os

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    from .repo import ROOT, run_tool

    torch.manual_seed(0)
    nanodet, cfg = build_nanodet(CONFIGS["m 320"][0])
    nanodet.eval()
    off_default_statistics(nanodet)
    g = torch.Generator().manual_seed(3)
    trained_like(nanodet, g)
    src, dst = tmp_path / "model_best.ckpt", tmp_path / "nanodet_plus_m_320.pth"
    torch.save({"epoch": 300, "state_dict": nanodet.state_dict(), "iter": 1000}, src)
    printed = run_tool(["tools/convert_mmdet_checkpoint.py", src, dst]).stdout
    config = printed.rsplit("use it with configs/", 1)[1].split()[0]
    assert config == "COCO-Detection/NanoDet/nanodet_plus_m_320.py"
    model = instantiate(LazyConfig.load(os.path.join(ROOT, "configs", config)).model).eval()
    incompatible = DetectionCheckpointer(model)._load_model(torch.load(dst, weights_only=True))
    assert not (
        incompatible.missing_keys or incompatible.unexpected_keys or incompatible.incorrect_shapes
    )
    image = structured_image(320, 320, g)
    mean = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    std = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)
    normalized = ((image - mean) / std)[None]
    with torch.no_grad():
        raw = nanodet(normalized)
        ((bboxes, labels),) = nanodet.head.get_bboxes(
            *raw.split([80, 32], dim=-1), {"img": normalized}
        )
        dets = model([{"image": image, "height": 320, "width": 320}])[0]["instances"]
    assert len(dets) == len(labels) == 100
    want = canonical(bboxes[:, :4], bboxes[:, 4], labels)
    got = canonical(dets.pred_boxes.tensor, dets.scores, dets.pred_classes)
    assert torch.equal(got[2], want[2])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dynamic_soft_label_assignment_equals_nanodets(seed):
    """gfl_d2's DynamicSoftLabelAssigner against NanoDet's, on a 320 input's 2,125 points."""
    from gfl_studies.nanodet_runtime import import_nanodet

    import_nanodet()
    from nanodet.model.head.assigner.dsl_assigner import DynamicSoftLabelAssigner as Theirs

    from gfl_d2.modeling.dsl_assigner import DynamicSoftLabelAssigner

    g = torch.Generator().manual_seed(seed)
    priors = []
    for s in (8, 16, 32, 64):
        n = -(-320 // s)
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        xy = torch.stack([xs.flatten(), ys.flatten()], 1).float() * s
        priors.append(torch.cat([xy, torch.full((len(xy), 2), float(s))], 1))
    priors = torch.cat(priors)  # (R, 4): x, y, stride, stride as NanoDet's
    distances = torch.rand(len(priors), 4, generator=g) * 4 * priors[:, 2:3]
    pred_boxes = torch.cat([priors[:, :2] - distances[:, :2], priors[:, :2] + distances[:, 2:]], 1)
    logits = torch.randn(len(priors), 5, generator=g) * 2 - 2
    corners = torch.rand(6, 2, generator=g) * 240
    gt_boxes = torch.cat([corners, corners + 16 + torch.rand(6, 2, generator=g) * 150], 1)
    gt_labels = torch.randint(0, 5, (6,), generator=g)

    theirs = Theirs(topk=13, iou_factor=3.0).assign(logits, priors, pred_boxes, gt_boxes, gt_labels)
    matched, iou = DynamicSoftLabelAssigner(13, 3.0)(
        logits, priors[:, :2], pred_boxes, gt_boxes, gt_labels
    )
    fg = theirs.gt_inds > 0
    assert fg.sum() > 10
    assert torch.equal(matched, theirs.gt_inds - 1)
    torch.testing.assert_close(iou[fg], theirs.max_overlaps[fg], rtol=1e-5, atol=1e-6)


def spread_aux_scores(nanodet, generator):
    """The auxiliary head away from its std-0.01 start (where every location scores alike)."""
    with torch.no_grad():
        for name, p in nanodet.aux_head.named_parameters():
            if name.endswith("conv.weight") or name.startswith(("gfl_cls.w", "gfl_reg.w")):
                p.copy_(torch.randn(p.shape, generator=generator) * (2 / p[0].numel()) ** 0.5)
        nanodet.aux_head.gfl_cls.bias.fill_(-3.0)


def nanodet_training_pair(seed):
    """
    NanoDet's NanoDet-Plus-m (aux head included) and gfl-d2's from the LazyConfig, with
    NanoDet's weights (the aux parts renamed by rename_nanodet_aux_key), both training.
    """
    import os

    from detectron2.config import LazyConfig, instantiate

    from gfl_d2.convert_nanodet import rename_nanodet_aux_key

    from .repo import ROOT

    torch.manual_seed(0)
    nanodet, _ = build_nanodet(CONFIGS["m 320"][0])
    g = torch.Generator().manual_seed(seed)
    trained_like(nanodet, g)
    spread_aux_scores(nanodet, g)
    names = {
        k: (rename_nanodet_aux_key if k.startswith("aux_") else rename_nanodet_key)(k)
        for k in nanodet.state_dict()
        if not k.endswith(("num_batches_tracked", "distribution_project.project"))
    }
    config = os.path.join(ROOT, "configs", "COCO-Detection", "NanoDet", "nanodet_plus_m_320.py")
    model = instantiate(LazyConfig.load(config).model)
    state = nanodet.state_dict()
    incompatible = model.load_state_dict({names[k]: state[k] for k in names}, strict=False)
    assert not incompatible.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in incompatible.missing_keys)
    return nanodet.train(), model.train(), names, g


def training_batch(generator, num_images=2, size=320):
    """BGR images with their boxes (NanoDet's lists of arrays and gfl-d2's Instances)."""
    from gfl_d2.testing import make_instances

    images, boxes, labels = [], [], []
    for i in range(num_images):
        images.append(structured_image(size, size, generator))
        corners = torch.rand(4 + i, 2, generator=generator) * (size - 120)
        sides = 20 + 90 * torch.rand(4 + i, 2, generator=generator)
        boxes.append(torch.cat([corners, corners + sides], dim=1))
        labels.append(torch.randint(0, 80, (4 + i,), generator=generator))
    ours = [
        {"image": im, "instances": make_instances(b, c, (size, size))}
        for im, b, c in zip(images, boxes, labels)
    ]
    mean = torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)
    std = torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1)
    theirs = {
        "img": torch.stack([(im - mean) / std for im in images]),
        "gt_bboxes": [b.numpy() for b in boxes],
        "gt_labels": [c.numpy() for c in labels],
        "gt_bboxes_ignore": None,
    }
    return ours, theirs


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
def test_nanodet_plus_training_losses_and_gradients_equal_nanodets(detached):
    """
    NanoDet-Plus's training step (``NanoDetPlus.forward_train``: the aux head's dynamic
    soft-label assignment and IoUs training both heads) against gfl-d2's on the same
    weights and batch: each loss term, then the gradient of every parameter; before
    NanoDet's ``detach_epoch`` and after it (gfl-d2: ``aux_detach_iter``).
    """
    from detectron2.utils.events import EventStorage

    nanodet, model, names, g = nanodet_training_pair(seed=4)
    ours_batch, theirs_batch = training_batch(g)
    nanodet.set_epoch(nanodet.detach_epoch if detached else nanodet.detach_epoch - 1)
    _, loss, want = nanodet.forward_train(theirs_batch)
    loss.backward()
    with EventStorage(model.aux_detach_iter if detached else model.aux_detach_iter - 1):
        got = model(ours_batch)
        sum(got.values()).backward()
    assert sorted(got) == sorted(want)
    for k in want:
        # sums over 2 x 2,125 points x 80 classes of float32 terms of order 1
        torch.testing.assert_close(got[k], want[k].detach(), rtol=1e-4, atol=1e-6, msg=k)
    ours = dict(model.named_parameters())
    largest = max(p.grad.abs().max().item() for p in nanodet.parameters())
    for k, p in nanodet.named_parameters():
        diff = (ours[names[k]].grad - p.grad).abs().max().item()
        # float32 rounding through the network's depth: relative to the tensor's largest
        # entry, and at least 1e-7 of the largest of all (biases before a BatchNorm have
        # a gradient that is 0 but for rounding)
        assert diff <= 1e-3 * p.grad.abs().max().item() + 1e-7 * largest, k
