"""
How well does each localisation-quality signal of a trained GFL rank its
detections by their true IoU? The study behind ``tools/quality_study.py``.

For every detection of every model on a validation set (the model's own
thresholds, after NMS) it records the IoU of the box with the best
ground-truth box of the predicted class, and the candidates:

* ``score``: the detection score (V1: the joint classification-IoU score; V2:
  that times the distribution-guided quality);
* ``quality``: the multiplied quality alone (V2, or an IoU/centerness branch);
* ``cls``: the score without the quality (``score / quality``);
* ``-std/size``: minus the edges' standard deviation relative to the box
  side it moves (mean of the four), from the edge distributions;
* ``top-1``: the mean over edges of the largest bin probability;
* ``top-4``: the mean over edges of the sum of the four largest (V2's top-k
  statistics, without its learned weighting);

and their Spearman rank correlations with the IoU. For a model with V2's
predictor it also measures what the predictor adds at inference: the COCO AP
as the model runs, and with the predictor's output held at one value (the
mean quality of its detections), which ranks the detections by their
classification score alone.
"""

import contextlib
import copy
import math
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.structures import Boxes, BoxMode, pairwise_iou

from gfl_d2.modeling.dgqp import distribution_statistics

from .correlation import spearman

__all__ = [
    "detection_candidates",
    "collect",
    "held_quality",
    "correlations",
    "render",
    "CANDIDATES",
    "SUBSETS",
]

CANDIDATES = ("score", "quality", "cls", "-std/size", "top-1", "top-4")
# the detections a correlation is taken over: all, and those on an object of their class
SUBSETS = ("all", "IoU > 0")


def detection_candidates(instances) -> Dict[str, np.ndarray]:
    """
    The candidates of one image's detections (Instances on the CPU, in
    output pixels): (K,) arrays named as in :data:`CANDIDATES`; the ones the
    model cannot give are absent.
    """
    out = {"score": instances.scores.float().numpy()}
    if instances.has("pred_quality"):
        quality = instances.pred_quality.float()
        out["quality"] = quality.numpy()
        out["cls"] = (instances.scores.float() / quality.clamp(min=1e-12)).numpy()
    if instances.has("pred_box_dists"):
        boxes = instances.pred_boxes.tensor.float()
        size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)  # (K, 2) width, height
        size = size.repeat(1, 2)  # l, t, r, b move along w, h, w, h
        out["-std/size"] = -(instances.pred_box_std.float() / size).mean(dim=1).numpy()
        stats = distribution_statistics(
            instances.pred_box_dists.float(), topk=4, add_mean=False
        )  # (K, 4, 4)
        out["top-1"] = stats[..., 0].mean(dim=1).numpy()
        out["top-4"] = stats.sum(dim=-1).mean(dim=1).numpy()
    return out


def _ground_truth(record: Dict, height: int, width: int):
    """(G, 4) XYXY boxes in the record's image size and (G,) classes, crowd regions left out."""
    anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
    return boxes, classes


def true_ious(instances, gt_boxes, gt_classes) -> np.ndarray:
    """
    (K,) IoU of each detection with the best ground-truth box of its predicted class (0 if
    none).
    """
    if len(instances) == 0:
        return np.zeros(0)
    if len(gt_boxes) == 0:
        return np.zeros(len(instances))
    iou = pairwise_iou(instances.pred_boxes, Boxes(gt_boxes))  # (K, G)
    same = instances.pred_classes[:, None] == gt_classes[None, :]
    return torch.where(same, iou, torch.zeros_like(iou)).max(dim=1).values.numpy()


@torch.no_grad()
def collect(
    model, dataset_dicts: List[Dict], mapper, num_images: Optional[int] = None, evaluator=None
) -> Dict[str, np.ndarray]:
    """
    Every detection's candidates and ``iou`` over the first ``num_images``
    records, pooled; the outputs also go to ``evaluator`` (a detectron2
    ``DatasetEvaluator``, reset by the caller) when given.
    """
    model.eval()
    parts: Dict[str, List[np.ndarray]] = {}
    for record in dataset_dicts[:num_images]:
        inputs = mapper(copy.deepcopy(record))
        outputs = model([inputs])
        if evaluator is not None:
            evaluator.process([inputs], outputs)
        inst = outputs[0]["instances"].to("cpu")
        gt_boxes, gt_classes = _ground_truth(record, *inst.image_size)
        values = detection_candidates(inst)
        values["iou"] = true_ious(inst, gt_boxes, gt_classes)
        for name, v in values.items():
            parts.setdefault(name, []).append(v)
    return {name: np.concatenate(v) for name, v in parts.items()}


@contextlib.contextmanager
def held_quality(model, value: float):
    """
    Inside the block, GFL V2's predictor (``model.head.dgqp``) outputs the
    quality ``value`` (0 < value < 1) at every location: the fused score is
    then the classification score times a constant, so the detections are
    ranked as by the classification score alone, and the score thresholds
    see about the scores they see as trained.
    """
    if not 0.0 < value < 1.0:
        raise ValueError(f"the held quality must lie in (0, 1), got {value}")
    dgqp = getattr(getattr(model, "head", None), "dgqp", None)
    if dgqp is None:
        raise ValueError(
            f"{type(model).__name__} has no distribution-guided quality predictor (head.dgqp) to "
            "hold"
        )
    logit = math.log(value / (1.0 - value))
    handle = dgqp.register_forward_hook(
        lambda module, inputs, output: [torch.full_like(q, logit) for q in output]
    )
    try:
        yield
    finally:
        handle.remove()


def correlations(results: Dict[str, Dict[str, np.ndarray]]) -> Dict[str, Dict[str, Dict]]:
    """
    Per model and subset (:data:`SUBSETS`): the number of detections and the
    Spearman correlation of each candidate the model has with the IoU
    (None: the model has no such candidate).
    """
    out = {}
    for name, values in results.items():
        iou = values["iou"]
        out[name] = {}
        for subset, keep in zip(SUBSETS, (np.ones_like(iou, dtype=bool), iou > 0)):
            row = {"detections": int(keep.sum())}
            row.update(
                {
                    c: spearman(values[c][keep], iou[keep]) if c in values else None
                    for c in CANDIDATES
                }
            )
            out[name][subset] = row
    return out


def render(data: Dict) -> str:
    """
    The Markdown of a report ``{"setup": ..., "correlations": correlations(...)}``: one row per
    model and subset.
    """
    setup = data.get("setup", {})
    lines = []
    if setup:
        models = "; ".join(
            f"{m['name']}: {m['config']} with {m['weights'] or 'its own initialisation'}"
            for m in setup.get("models", [])
        )
        lines += [
            f"Measured {setup.get('date', '?')} on {setup.get('device', '?')}"
            + (f", {setup['images']} validation images" if setup.get("images") else "")
            + (f". Models: {models}" if models else "")
            + ".",
            "",
        ]
    lines += [
        "| model | detections | " + " | ".join(f"`{c}`" for c in CANDIDATES) + " |",
        "|---|---:|" + "---:|" * len(CANDIDATES),
    ]
    for name, subsets in data["correlations"].items():
        for subset in SUBSETS:
            row = subsets[subset]
            cells = ["–" if row.get(c) is None else f"{row[c]:.3f}" for c in CANDIDATES]
            lines.append(f"| {name} ({subset}) | {row['detections']} | " + " | ".join(cells) + " |")
    if data.get("ap"):
        lines += [
            "",
            "COCO AP of the same detections; for V2, also with its predictor's output held at the "
            "mean "
            "quality of its detections (q̄), which ranks them by the classification score alone.",
            "",
            "| model | AP | AP50 | AP75 | q̄ | AP, quality held at q̄ | AP50, held | AP75, held |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in data["ap"].items():
            held = row.get("held") or {}
            cells = [row.get(k) for k in ("AP", "AP50", "AP75")]
            cells += [held.get("quality")] + [held.get(k) for k in ("AP", "AP50", "AP75")]
            text = [
                "–" if v is None else f"{v:.3f}" if i == 3 else f"{v:.1f}"
                for i, v in enumerate(cells)
            ]
            lines.append(f"| {name} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def scatter_plot(results: Dict[str, Dict[str, np.ndarray]], panels, path: str) -> None:
    """One panel per (model, candidate) in ``panels``: the candidate against the true IoU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (model, cand) in zip(axes[0], panels):
        values = results[model]
        ax.scatter(values[cand], values["iou"], s=3, alpha=0.25, linewidths=0)
        ax.set_xlabel(f"{cand} ({model})")
        ax.set_ylabel("IoU with the ground truth")
        ax.set_title(
            f"{model}: {cand}, Spearman {spearman(values[cand], values['iou']):.3f}", fontsize=10
        )
        ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
