#!/usr/bin/env python
"""
Show what GFL's edge distributions know.

Per image (``--input``): a PNG with the detections drawn and, for the top
detections, the four edge distributions (left, top, right, bottom) as bar
plots; every edge carries a band of +-1 standard deviation, and edges whose
standard deviation exceeds ``--uncertain-ratio`` of the box side are dashed.

    python tools/visualize_distributions.py --input datasets/shapes/val/000003.png --output vis/ \
        train.init_checkpoint=output/gfl_R_18_FPN_shapes/model_final.pth

Dataset view (``--analyze-targets``): the histogram of the regression targets
(edge distances of ATSS positives, in units of stride: the paper's Fig. 5c)
over the config's training set, the share of targets beyond ``n`` and a
recommended ``n`` for that dataset.

    python tools/visualize_distributions.py --analyze-targets --output vis/ [--max-images 500]
"""

import json
import logging
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from detectron2.config import instantiate  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from gfl_d2.bins import bin_fit, regression_targets  # noqa: E402
from gfl_d2.cli import config_argument_parser, parse_with_overrides, setup_config  # noqa: E402
from gfl_d2.predictor import LazyPredictor, dataset_metadata, list_images  # noqa: E402

EDGES = ("left", "top", "right", "bottom")
logger = logging.getLogger("detectron2")


def parse_args(argv=None):
    p = config_argument_parser(__doc__)
    p.add_argument("--input", nargs="*", default=[], help="image files and/or folders")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--top", type=int, default=4, help="detections whose distributions are plotted")
    p.add_argument("--confidence-threshold", type=float, default=0.3)
    p.add_argument(
        "--uncertain-ratio",
        type=float,
        default=0.1,
        help="dash an edge whose std exceeds this fraction of the box side",
    )
    p.add_argument(
        "--analyze-targets",
        action="store_true",
        help="histogram of regression targets over the dataset",
    )
    p.add_argument("--max-images", type=int, default=500, help="images used by --analyze-targets")
    args = parse_with_overrides(p, argv)
    if not args.analyze_targets and not args.input:
        p.error("give --input images, or --analyze-targets")
    return args


def draw_detections(image_rgb, instances, class_names, args, out_path):
    """
    One figure: the image with boxes and std bands, and a row of 4 bar plots per top detection.
    """
    top = instances[: args.top]
    rows = max(len(top), 1)
    fig = plt.figure(figsize=(14, max(7, 1.7 * rows)))
    grid = GridSpec(rows, 5, figure=fig, width_ratios=[6, 1, 1, 1, 1], wspace=0.35, hspace=0.7)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image_rgb)
    ax.set_axis_off()
    colours = plt.cm.tab10(np.arange(10))
    for i in range(len(instances)):
        x0, y0, x1, y1 = instances.pred_boxes.tensor[i].tolist()
        colour = colours[i % 10] if i < len(top) else (1, 1, 1, 0.6)
        stds = instances.pred_box_std[i].tolist()
        sides = [y1 - y0, x1 - x0, y1 - y0, x1 - x0]  # the length each edge spans
        spans = [x1 - x0, y1 - y0, x1 - x0, y1 - y0]  # the side along which each edge moves
        edges = [
            ((x0, y0), (x0, y1)),
            ((x0, y0), (x1, y0)),
            ((x1, y0), (x1, y1)),
            ((x0, y1), (x1, y1)),
        ]
        for e, ((ax0, ay0), (ax1, ay1)) in enumerate(edges):
            uncertain = stds[e] > args.uncertain_ratio * max(spans[e], 1e-6)
            ax.plot(
                [ax0, ax1],
                [ay0, ay1],
                color=colour,
                linewidth=2,
                linestyle="--" if uncertain else "-",
            )
            if i < len(top):  # +-1 std band around the edge
                s = stds[e]
                if e in (0, 2):
                    ax.add_patch(
                        Rectangle(
                            (ax0 - s, ay0), 2 * s, sides[e], color=colour, alpha=0.25, linewidth=0
                        )
                    )
                else:
                    ax.add_patch(
                        Rectangle(
                            (ax0, ay0 - s), sides[e], 2 * s, color=colour, alpha=0.25, linewidth=0
                        )
                    )
        if i < len(top):
            label = (
                class_names[int(instances.pred_classes[i])]
                if class_names
                else str(int(instances.pred_classes[i]))
            )
            ax.text(
                x0,
                y0 - 2,
                f"#{i} {label} {float(instances.scores[i]):.2f}",
                color="white",
                fontsize=8,
                bbox=dict(facecolor=colour, alpha=0.8, pad=1, linewidth=0),
            )
    for i in range(len(top)):
        probs = top.pred_box_dists[i].numpy()
        for e in range(4):
            bar_ax = fig.add_subplot(grid[i, 1 + e])
            bar_ax.bar(np.arange(probs.shape[1]), probs[e], color=colours[i % 10], width=0.9)
            bar_ax.set_ylim(0, 1)
            bar_ax.set_title(f"#{i} {EDGES[e]} σ={float(top.pred_box_std[i, e]):.1f}px", fontsize=7)
            bar_ax.tick_params(labelsize=6)
    if len(top) == 0:
        ax.set_title("no detection above the threshold")
    fig.savefig(out_path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def visualize_images(cfg, args):
    predictor = LazyPredictor(cfg)
    if not getattr(predictor.model, "output_box_distributions", False):
        raise SystemExit(
            "the model does not output box distributions (model.output_box_distributions=False)"
        )
    names = getattr(dataset_metadata(cfg), "thing_classes", None)
    for path in list_images(args.input):
        image = read_image(path, format=predictor.input_format)
        instances = predictor(image)
        instances = instances[instances.scores >= args.confidence_threshold]
        rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
        out_path = os.path.join(
            args.output, os.path.splitext(os.path.basename(path))[0] + "_dists.png"
        )
        draw_detections(rgb, instances, names, args, out_path)
        logger.info(f"{path}: {len(instances)} detections -> {out_path}")


def analyze_targets(cfg, args):
    model = instantiate(cfg.model).eval()
    try:
        values, strides = regression_targets(
            model,
            instantiate(cfg.dataloader.train.dataset),
            instantiate(cfg.dataloader.train.mapper),
            args.max_images,
        )
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    transform = model.box2box_transform
    reg_max, fit = (
        transform.reg_max,
        bin_fit(values, strides, transform.reg_max, transform.bin_width),
    )
    beyond, p99, recommended = fit["share_clamped"], fit["p99"], fit["recommended_reg_max"]
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(reg_max + 2, int(values.max()) + 1)
    ax.hist(values, bins=np.arange(0, top + 0.5, 0.5), color="tab:blue")
    ax.axvline(reg_max, color="tab:red", linestyle="--", label=f"n = {reg_max}")
    ax.axvline(
        recommended, color="tab:green", linestyle=":", label=f"recommended n = {recommended}"
    )
    ax.set_xlabel("regression target (edge distance / stride)")
    ax.set_ylabel("count")
    ax.set_title(f"{len(values)} targets; {beyond:.2%} beyond n - 0.1")
    ax.legend()
    out_png = os.path.join(args.output, "regression_targets.png")
    fig.savefig(out_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    summary = dict(
        num_targets=int(len(values)),
        reg_max=int(reg_max),
        share_beyond_reg_max=beyond,
        percentiles={str(q): float(np.percentile(values, q)) for q in (50, 90, 99, 99.9)},
        max=float(values.max()),
        recommended_reg_max=recommended,
    )
    with open(os.path.join(args.output, "regression_targets.json"), "w") as f:
        json.dump(summary, f, indent=2)
    logger.info(
        f"{len(values)} regression targets: median {summary['percentiles']['50']:.2f}, "
        f"99th percentile {p99:.2f}, max {summary['max']:.2f} strides; {beyond:.2%} exceed "
        f"n - 0.1 = {reg_max - 0.1:.1f} "
        f"(clamped in training). Recommended n (covers 99%): {recommended}. Histogram: {out_png}"
    )
    if fit["advice"]:
        logger.warning(fit["advice"])
    return summary


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_config(args)
    os.makedirs(args.output, exist_ok=True)
    if args.analyze_targets:
        analyze_targets(cfg, args)
    if args.input:
        visualize_images(cfg, args)


if __name__ == "__main__":
    main()
