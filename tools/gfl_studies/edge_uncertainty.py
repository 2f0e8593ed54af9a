"""
Does the predicted edge uncertainty (``pred_box_std``) know which edges are
ambiguous? On a dataset whose annotations carry ``edge_flags`` (the
generated shapes dataset), each ground-truth box is matched to its best
detection of the same class and its edges are grouped by whether they were
blurred and whether they are occluded. ``tools/edge_uncertainty.py``
is the command line.
"""

import os
from typing import Dict

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, pairwise_iou

from .correlation import spearman

__all__ = ["GROUPS", "edge_uncertainty_rows", "summarize_edge_uncertainty", "render"]

GROUPS = ("sharp, free", "blurred", "occluded", "blurred + occluded")


def _group(flags: Dict, edge: int) -> int:
    blurred, occluded = bool(flags["blurred"][edge]), bool(flags["occluded"][edge])
    name = (
        "blurred + occluded"
        if blurred and occluded
        else "blurred"
        if blurred
        else "occluded"
        if occluded
        else "sharp, free"
    )
    return GROUPS.index(name)


def _image_rows(predictor, anns, image_path, id_map, min_iou):
    """The rows of one image's matched ground-truth edges."""
    det = predictor(read_image(image_path, format=predictor.input_format))
    if len(det) == 0:
        return []
    gt = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    gt_cls = torch.tensor([id_map[a["category_id"]] for a in anns])
    iou = pairwise_iou(Boxes(gt), det.pred_boxes)  # (M, D)
    iou[gt_cls[:, None] != det.pred_classes[None, :]] = -1
    best_iou, best = iou.max(dim=1)
    rows = []
    for m, a in enumerate(anns):
        if best_iou[m] < min_iou:
            continue
        d = int(best[m])
        gw, gh = float(gt[m, 2] - gt[m, 0]), float(gt[m, 3] - gt[m, 1])
        for e in range(4):
            std = float(det.pred_box_std[d, e])
            side = gw if e in (0, 2) else gh
            rows.append(
                (
                    _group(a["edge_flags"], e),
                    std,
                    std / side,
                    abs(float(det.pred_boxes.tensor[d, e] - gt[m, e])),
                )
            )
    return rows


def edge_uncertainty_rows(
    predictor, coco, image_root: str, max_images: int, min_iou: float
) -> np.ndarray:
    """
    Per edge of each ground-truth box matched by a detection of its class (IoU >= ``min_iou``):
    (group index in GROUPS, predicted std px, std / box side, |edge error| px), as an (E, 4) array.
    """
    id_map = {cid: i for i, cid in enumerate(sorted(coco.getCatIds()))}
    rows = []
    img_ids = sorted(coco.getImgIds())
    for img_id in img_ids[:max_images] if max_images else img_ids:
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)) if "edge_flags" in a]
        if anns:
            path = os.path.join(image_root, coco.imgs[img_id]["file_name"])
            rows += _image_rows(predictor, anns, path, id_map, min_iou)
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def summarize_edge_uncertainty(rows: np.ndarray) -> Dict:
    """
    Per group of edges (GROUPS): count, mean std (px and relative to the side), mean |error|;
    Spearman(std, error).
    """
    summary = {}
    for g, name in enumerate(GROUPS):
        sel = rows[rows[:, 0] == g]
        summary[name] = dict(
            edges=int(len(sel)),
            mean_std_px=float(sel[:, 1].mean()) if len(sel) else None,
            mean_relative_std=float(sel[:, 2].mean()) if len(sel) else None,
            mean_abs_error_px=float(sel[:, 3].mean()) if len(sel) else None,
        )
    if len(rows) > 2:
        summary["spearman_std_vs_error"] = spearman(rows[:, 1], rows[:, 3])
    return summary


def render(data: Dict) -> str:
    """The Markdown of a report ``{"setup": ..., "summary": summarize_edge_uncertainty(...)}``."""
    setup, summary = data.get("setup", {}), data["summary"]
    lines = []
    if setup:
        lines += [
            f"Measured {setup.get('date', '?')} on {setup.get('device', '?')}: "
            f"{setup.get('config', '?')} with "
            f"{setup.get('weights', '?')}, ground-truth boxes matched to detections of their class "
            "with IoU >= "
            f"{setup.get('min_iou', '?')}.",
            "",
        ]
    lines += [
        "| edges | count | mean std (px) | mean std / box side | mean abs. edge error (px) |",
        "|---|---|---|---|---|",
    ]
    for name in GROUPS:
        s = summary[name]
        if s["edges"]:
            lines.append(
                f"| {name} | {s['edges']} | {s['mean_std_px']:.2f} | {s['mean_relative_std']:.3f} "
                "| "
                f"{s['mean_abs_error_px']:.2f} |"
            )
        else:
            lines.append(f"| {name} | 0 | - | - | - |")
    if "spearman_std_vs_error" in summary:
        lines.append(
            "\nSpearman correlation of std with the edge error: "
            f"{summary['spearman_std_vs_error']:.3f}"
        )
    return "\n".join(lines)
