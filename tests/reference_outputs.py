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

from gfl_d2.lazy_config import load_lazy_config
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
        {
            "image": shapes_image(BOXES, CLASSES, size=size, seed=0),
            "instances": make_instances(BOXES, CLASSES, size),
        },
        {
            "image": shapes_image(BOXES[:1], CLASSES[:1], size=size, seed=1),
            "instances": make_instances(BOXES[:1], CLASSES[:1], size),
        },
    ]


def build(name, extra_overrides=()):
    """
    The variant's model, with head weights re-drawn (seeded) so that its detections are
    confident and varied.
    """
    config, overrides = VARIANTS[name]
    cfg = load_lazy_config(os.path.join(ROOT, config), [*overrides, *extra_overrides])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in sorted(model.head.named_parameters()):
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif pname.endswith("bias"):
                p.copy_(
                    0.5 * torch.randn(p.shape, generator=g)
                    - (1.0 if pname.startswith("cls_score") else 0.0)
                )
    model.test_score_thresh = 0.01  # (the attribute of GFL, RetinaNet and FCOS)
    return model


def outputs(name, extra_overrides=(), top=TOP_DETECTIONS):
    """
    {"losses": {name: float}, "detections": per image {field: list}} of the
    variant (its ``top`` highest-scoring detections per image), with
    ``extra_overrides`` (config ``key=value``) applied on top of its own.
    """
    model = build(name, extra_overrides)
    model.train()
    with EventStorage():
        losses = model(batch())
    model.eval()
    with torch.no_grad():
        results = model([{"image": x["image"]} for x in batch()])
    detections = []
    for r in results:
        inst = r["instances"][:top]
        det = {
            "boxes": inst.pred_boxes.tensor.tolist(),
            "scores": inst.scores.tolist(),
            "classes": inst.pred_classes.tolist(),
        }
        if inst.has("pred_box_std"):
            det["box_std"] = inst.pred_box_std.tolist()
        detections.append(det)
    return {"losses": {k: v.item() for k, v in sorted(losses.items())}, "detections": detections}


# The lock must hold on any CPU a user has and still catch a real change of behaviour.
# Another CPU (instruction set, thread split, convolution kernel) sums the same float32
# products in another order. Each layer then moves a value by about sqrt(fan-in)
# roundings (fan-in up to 3 x 3 x 512 = 4608: about 68), and about 20 layers lie
# between the image and the head's outputs: about 1,400 roundings, 2**11 with a margin.
# A value may differ by that many units of float32 roundoff at the scale it is computed
# at: the image side for boxes and their std (anchor centres plus stride x distance),
# 1 for scores (probabilities), the value itself for a loss.
FLOAT32_ROUNDOFF = 2.0**-24
ROUNDINGS = 2**11
IMAGE_SIDE = 128.0


def tolerance(scale: float) -> float:
    """The difference between two CPUs' float32 results at magnitude ``scale``."""
    return ROUNDINGS * FLOAT32_ROUNDOFF * scale


def _close(a, b, tol) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def compare(actual, expected):
    """
    The differences between two ``outputs`` beyond float32 noise, as lines
    (empty: the same behaviour). Detections are matched as a set: where two
    scores lie within the noise of each other, another CPU may order them
    differently, or swap the last recorded one with the next; so ``actual``
    should hold a few more detections than the record.
    """
    problems = []
    if actual["losses"].keys() != expected["losses"].keys():
        problems.append(f"loss terms {sorted(actual['losses'])} != {sorted(expected['losses'])}")
    for key, want in expected["losses"].items():
        got = actual["losses"].get(key)
        if got is not None and abs(got - want) > tolerance(abs(want)):
            problems.append(f"{key}: {got!r} != {want!r}")
    if len(actual["detections"]) != len(expected["detections"]):
        problems.append(f"{len(actual['detections'])} images != {len(expected['detections'])}")
    for i, (got, want) in enumerate(zip(actual["detections"], expected["detections"])):
        problems += [f"image {i}: {p}" for p in _compare_detections(got, want)]
    return problems


def _rows(det):
    """The detections of one image as (class, score, box, std) rows."""
    stds = det.get("box_std") or [None] * len(det["scores"])
    return list(zip(det["classes"], det["scores"], det["boxes"], stds))


def _compare_detections(got, want):
    if got.keys() != want.keys():
        return [f"fields {sorted(got)} != {sorted(want)}"]
    if not want["scores"]:
        return ["the record holds no detection to compare"]
    box_tol, score_tol = tolerance(IMAGE_SIDE), tolerance(1.0)
    unmatched = _rows(got)
    problems = []
    for cls, score, box, std in _rows(want):
        match = next(
            (
                r
                for r in unmatched
                if r[0] == cls
                and abs(r[1] - score) <= score_tol
                and _close(r[2], box, box_tol)
                and (std is None or _close(r[3], std, box_tol))
            ),
            None,
        )
        if match is None:
            problems.append(f"no detection of class {cls}, score {score:.6f}, box {box}")
        else:
            unmatched.remove(match)
    # a detection the record lacks is a change, unless it competes with the record's last one
    cutoff = min(want["scores"]) + score_tol
    problems += [
        f"new detection of class {r[0]}, score {r[1]:.6f}, box {r[2]}"
        for r in unmatched
        if r[1] > cutoff
    ]
    return problems
