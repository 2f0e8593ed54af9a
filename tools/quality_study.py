#!/usr/bin/env python
"""
How well each localisation-quality signal ranks detections by their true IoU
(Spearman's rank correlation), for trained GFL models on their config's
validation set: V1's joint score, V2's fused score and its distribution-guided
quality, the edges' relative std, and the top-k statistics of the edge
distributions; and each model's COCO AP, for V2 also with its predictor's
output held at one value (what the predictor adds at inference). Writes the
report (``<results>/<name>.json`` with the correlations and APs, ``<name>.md``
with the tables), and to --output every
detection's values (``detections.json``) and a scatter picture.

    python tools/quality_study.py \\
        --model GFL configs/Synthetic/gfl_R_18_FPN_shapes.py \\
            output/ablation_v2/GFL/seed0/model_final.pth \\
        --model "GFL V2" configs/Synthetic/gflv2_R_18_FPN_shapes.py \\
            output/ablation_v2/GFL_V2/seed0/model_final.pth \\
        --output output/quality_correlation --name quality_correlation_shapes
    python tools/quality_study.py --report --name quality_correlation_shapes   # the .md again

See ``gfl_studies/quality_study.py`` for the candidates.
"""

import argparse
import json
import os

import numpy as np
from detectron2.config import instantiate

from gfl_d2.checkpoint import CheckedCheckpointer
from gfl_d2.lazy_config import load_lazy_config
from gfl_studies.quality_study import (
    CANDIDATES,
    collect,
    correlations,
    held_quality,
    render,
    scatter_plot,
)
from gfl_studies.reports import add_report_arguments, machine, render_again, write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        nargs=3,
        action="append",
        metavar=("NAME", "CONFIG", "WEIGHTS"),
        help="a model: its name, LazyConfig and checkpoint ('' for the config's own init)",
    )
    p.add_argument("--num-images", type=int, default=None, help="validation images (default: all)")
    p.add_argument(
        "--output",
        default="output/quality_correlation",
        help="folder of the detections and the picture",
    )
    p.add_argument("--opts", nargs="*", default=[], help="overrides for every model's config")
    add_report_arguments(p, "quality_correlation")
    args = p.parse_args(argv)
    if not args.report and not args.model:
        p.error("give at least one --model NAME CONFIG WEIGHTS (or --report)")
    return args


def _bbox_ap(evaluator):
    metrics = (evaluator.evaluate() or {}).get("bbox", {})
    return {k: metrics.get(k) for k in ("AP", "AP50", "AP75")}


def measure(args):
    """
    Every detection's candidates and IoU, per model, the number of images, and
    per model its COCO AP (for V2, also with the quality held at its mean).
    """
    results, aps, images = {}, {}, 0
    for name, config, weights in args.model:
        cfg = load_lazy_config(config, list(args.opts))
        model = instantiate(cfg.model)
        if weights:
            CheckedCheckpointer(model).load(weights)
        dataset = instantiate(cfg.dataloader.test.dataset)
        mapper = instantiate(cfg.dataloader.test.mapper)
        evaluator = instantiate(cfg.dataloader.evaluator)
        evaluator.reset()
        results[name] = collect(model, dataset, mapper, args.num_images, evaluator)
        aps[name] = _bbox_ap(evaluator)
        images = len(dataset[: args.num_images])
        print(
            f"{name}: {len(results[name]['iou'])} detections on {images} images, AP "
            f"{aps[name]['AP']}",
            flush=True,
        )
        quality = results[name].get("quality")
        if getattr(model.head, "dgqp", None) is not None and quality is not None and len(quality):
            mean = float(quality.astype(np.float64).mean())
            evaluator.reset()
            with held_quality(model, mean):
                collect(model, dataset, mapper, args.num_images, evaluator)
            aps[name]["held"] = dict(quality=mean, **_bbox_ap(evaluator))
            print(f"{name}, quality held at {mean:.3f}: AP {aps[name]['held']['AP']}", flush=True)
    return results, aps, images


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return None
    for name, config, weights in args.model:
        for what, path in (("config", config), ("checkpoint", weights)):
            if path and not os.path.isfile(path):
                raise SystemExit(f"error: model {name!r}: {what} {path} not found")
    os.makedirs(args.output, exist_ok=True)
    results, aps, images = measure(args)
    setup = dict(
        machine("cpu"),
        images=images,
        models=[dict(name=n, config=c, weights=w) for n, c, w in args.model],
    )
    print(
        write_report(
            args.results,
            args.name,
            dict(setup=setup, correlations=correlations(results), ap=aps),
            render,
        )
    )
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump({n: {k: v.tolist() for k, v in r.items()} for n, r in results.items()}, f)
    # the score of each model, then each model's quality and its best distribution statistic
    panels = [(n, "score") for n in results]
    panels += [(n, "quality") for n, r in results.items() if "quality" in r]
    panels += [(n, "top-1") for n, r in results.items() if "top-1" in r][:1]
    scatter_plot(results, panels, os.path.join(args.output, "quality_vs_iou.png"))
    print(
        f"written to {args.results}/{args.name}.json, .md and {args.output}/ (candidates: "
        f"{', '.join(CANDIDATES)})"
    )
    return results


if __name__ == "__main__":
    main()
