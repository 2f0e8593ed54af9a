"""
Losses and detections of every GFL variant (and the QFL drop-ins) on fixed
seeds and a fixed batch: the behaviour the core refactor must keep.
``tests/fixtures/make_reference_outputs.py`` records them (before a refactor),
``test_reference_outputs.py`` compares the current code with the record.
"""
import os

import torch

from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from gfl_d2.engine import load_lazy_config
from gfl_d2.testing import make_instances, shapes_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "reference_outputs.json")
SHAPES = "configs/Synthetic/"
GFL_CFG, ATSS_CFG = SHAPES + "gfl_R_18_FPN_shapes.py", SHAPES + "atss_R_18_FPN_shapes.py"

# name -> (config file, overrides): the GFL model's variants of the paper's ablations
ABL = SHAPES + "Ablations/"
VARIANTS = {
    "GFL": (GFL_CFG, []),
    "ATSS": (ATSS_CFG, []),
    "ATSS+QFL": (ABL + "atss_qfl_R_18_FPN_shapes.py", []),
    "ATSS+DFL": (ABL + "atss_dfl_R_18_FPN_shapes.py", []),
    "GFL beta=0": (ABL + "gfl_beta0_R_18_FPN_shapes.py", []),
    "GFL n=4": (ABL + "gfl_n4_R_18_FPN_shapes.py", []),
    "GFL delta=0.5": (ABL + "gfl_delta0_5_R_18_FPN_shapes.py", []),
    "GFL no DFL": (ABL + "gfl_no_dfl_R_18_FPN_shapes.py", []),
    "FL+IoU branch": (ABL + "fl_iou_branch_R_18_FPN_shapes.py", []),
    "FL, no quality": (ABL + "fl_no_quality_R_18_FPN_shapes.py", []),
    "ATSS+QFL, ctr-weighted": (ABL + "atss_qfl_ctr_weighted_R_18_FPN_shapes.py", []),
    "GFL, unweighted box losses": (GFL_CFG, ["model.box_loss_weighting=none"]),
    "RetinaNet+QFL": (SHAPES + "retinanet_qfl_R_18_FPN_shapes.py", []),
    "FCOS+QFL": (SHAPES + "fcos_qfl_R_18_FPN_shapes.py", []),
}
BOXES = [[10, 12, 60, 70], [70, 20, 120, 60], [30, 80, 52, 100], [5, 90, 40, 124]]
CLASSES = [0, 1, 2, 3]
TOP_DETECTIONS = 30


def batch(size=(128, 128)):
    return [
        {"image": shapes_image(BOXES, CLASSES, size=size, seed=0), "instances": make_instances(BOXES, CLASSES, size)},
        {"image": shapes_image(BOXES[:1], CLASSES[:1], size=size, seed=1),
         "instances": make_instances(BOXES[:1], CLASSES[:1], size)},
    ]


def build(name):
    """The variant's model, with head weights re-drawn (seeded) so that its detections are confident and varied."""
    config, overrides = VARIANTS[name]
    cfg = load_lazy_config(os.path.join(ROOT, config), overrides)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in sorted(model.head.named_parameters()):
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif pname.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g) - (1.0 if pname.startswith("cls_score") else 0.0))
    model.test_score_thresh = 0.01  # (the attribute of GFL, RetinaNet and FCOS)
    return model


def outputs(name):
    """{"losses": {name: float}, "detections": per image {field: list}} of the variant."""
    model = build(name)
    model.train()
    with EventStorage():
        losses = model(batch())
    model.eval()
    with torch.no_grad():
        results = model([{"image": x["image"]} for x in batch()])
    detections = []
    for r in results:
        inst = r["instances"][:TOP_DETECTIONS]
        det = {
            "boxes": inst.pred_boxes.tensor.tolist(),
            "scores": inst.scores.tolist(),
            "classes": inst.pred_classes.tolist(),
        }
        if inst.has("pred_box_std"):
            det["box_std"] = inst.pred_box_std.tolist()
        detections.append(det)
    return {"losses": {k: v.item() for k, v in sorted(losses.items())}, "detections": detections}
