#!/usr/bin/env python
"""
Does the predicted edge uncertainty (``pred_box_std``) know which edges are
ambiguous? On a dataset whose annotations carry ``edge_flags`` (the generated
shapes dataset records, for every edge, whether it was blurred/faded and
whether it is occluded), match each ground-truth box to its best detection
(same class, IoU >= 0.5) and compare the standard deviation of blurred or
occluded edges with that of sharp, free edges.

    python tools/measure_edge_uncertainty.py --output uncertainty/ \
        train.init_checkpoint=output/gfl_R_18_FPN_shapes/model_final.pth

Writes ``edge_uncertainty.json`` and prints a Markdown table. The relative std
(std / box side along the edge's axis) controls for object size.
"""
import argparse
import json
import logging
import os
import sys

import numpy as np
import torch
from pycocotools.coco import COCO

from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gfl_d2.engine import DEFAULT_CONFIG, load_lazy_config  # noqa: E402
from gfl_d2.predictor import LazyPredictor, dataset_metadata  # noqa: E402

GROUPS = ("sharp, free", "blurred", "occluded", "blurred + occluded")
logger = logging.getLogger("detectron2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--output", required=True)
    p.add_argument("--max-images", type=int, default=0, help="0: the whole test set")
    p.add_argument("--min-iou", type=float, default=0.5)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    return p.parse_args(argv)


def collect(predictor, coco, image_root, max_images, min_iou):
    """Per matched edge: (group index, std px, relative std, |edge error| px)."""
    id_map = {cid: i for i, cid in enumerate(sorted(coco.getCatIds()))}
    rows = []
    img_ids = sorted(coco.getImgIds())
    if max_images:
        img_ids = img_ids[:max_images]
    for img_id in img_ids:
        info = coco.imgs[img_id]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)) if "edge_flags" in a]
        if not anns:
            continue
        det = predictor(read_image(os.path.join(image_root, info["file_name"]), format=predictor.input_format))
        if len(det) == 0:
            continue
        gt = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        gt_cls = torch.tensor([id_map[a["category_id"]] for a in anns])
        iou = pairwise_iou(Boxes(gt), det.pred_boxes)  # (M, D)
        iou[gt_cls[:, None] != det.pred_classes[None, :]] = -1
        best_iou, best = iou.max(dim=1)
        for m, a in enumerate(anns):
            if best_iou[m] < min_iou:
                continue
            d = int(best[m])
            pred_box = det.pred_boxes.tensor[d]
            gw, gh = float(gt[m, 2] - gt[m, 0]), float(gt[m, 3] - gt[m, 1])
            for e in range(4):
                blurred = bool(a["edge_flags"]["blurred"][e])
                occluded = bool(a["edge_flags"]["occluded"][e])
                group = GROUPS.index(
                    "blurred + occluded" if blurred and occluded else "blurred" if blurred
                    else "occluded" if occluded else "sharp, free"
                )
                std = float(det.pred_box_std[d, e])
                side = gw if e in (0, 2) else gh
                rows.append((group, std, std / side, abs(float(pred_box[e] - gt[m, e]))))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


def summarize(rows):
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
        rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
        summary["spearman_std_vs_error"] = float(np.corrcoef(rank(rows[:, 1]), rank(rows[:, 3]))[0, 1])
    return summary


def to_markdown(summary):
    lines = [
        "| edges | count | mean std (px) | mean std / box side | mean abs. edge error (px) |",
        "|---|---|---|---|---|",
    ]
    for name in GROUPS:
        s = summary[name]
        if s["edges"]:
            lines.append(
                f"| {name} | {s['edges']} | {s['mean_std_px']:.2f} | {s['mean_relative_std']:.3f} | "
                f"{s['mean_abs_error_px']:.2f} |"
            )
        else:
            lines.append(f"| {name} | 0 | - | - | - |")
    if "spearman_std_vs_error" in summary:
        lines.append(f"\nSpearman correlation of std with the edge error: {summary['spearman_std_vs_error']:.3f}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    cfg = load_lazy_config(args.config_file, args.opts)
    predictor = LazyPredictor(cfg)
    meta = dataset_metadata(cfg)
    coco = COCO(meta.json_file)
    rows = collect(predictor, coco, meta.image_root, args.max_images, args.min_iou)
    if len(rows) == 0:
        raise SystemExit("no ground-truth box was matched by a detection: is the model trained?")
    summary = summarize(rows)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "edge_uncertainty.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(to_markdown(summary))
    return summary


if __name__ == "__main__":
    main()
