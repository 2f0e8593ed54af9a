"""
QFL as a drop-in for detectron2's RetinaNet and FCOS (QFLRetinaNet, QFLFCOS): only the
classification term changes.
"""

import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from gfl_d2.lazy_config import load_lazy_config
from gfl_d2.modeling import QFLRetinaNet
from gfl_d2.testing import two_image_batch

from .repo import ROOT


def perfect_deltas(model, anchors, gt_boxes, n):
    """Per-level box predictions that reproduce each anchor's matched box exactly."""
    all_anchors = Boxes.cat(anchors).tensor
    deltas = torch.stack(
        [model.box2box_transform.get_deltas(all_anchors, g) for g in gt_boxes]
    )  # (N, R, 4)
    return list(deltas.split([len(a) for a in anchors], dim=1))


@pytest.mark.parametrize("config", ["retinanet", "fcos"])
def test_qfl_drop_in_equals_focal_loss_without_alpha_when_boxes_are_perfect(config):
    """
    With IoU = 1 at every positive, QFL's target is the hard label and |y - σ|^2 is FL's (1 -
    p_t)^2.
    """
    base = load_lazy_config(
        os.path.join(ROOT, f"configs/Synthetic/{config}_R_18_FPN_shapes.py")
    ).model
    base.focal_loss_alpha = -1  # QFL has no α
    qfl = load_lazy_config(
        os.path.join(ROOT, f"configs/Synthetic/{config}_qfl_R_18_FPN_shapes.py")
    ).model
    qfl.focal_loss_alpha = -1
    torch.manual_seed(0)
    base, qfl = instantiate(base), instantiate(qfl)
    data = two_image_batch()
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


def test_yacs_builds_qfl_retinanet():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from gfl_d2 import add_gfl_config

    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE",
            "QFLRetinaNet",
            "MODEL.RETINANET.QFL_BETA",
            "1.5",
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
            "MODEL.BACKBONE.NAME",
            "build_retinanet_resnet_fpn_backbone",
            "MODEL.RESNETS.OUT_FEATURES",
            "['res3', 'res4', 'res5']",
            "MODEL.FPN.IN_FEATURES",
            "['res3', 'res4', 'res5']",
        ]
    )
    model = build_model(cfg)
    assert isinstance(model, QFLRetinaNet) and model.qfl_beta == 1.5
