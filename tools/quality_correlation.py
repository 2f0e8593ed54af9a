#!/usr/bin/env python
"""
How well each localisation-quality signal ranks detections by their true IoU
(Spearman's rank correlation), for trained GFL models on their config's
validation set: V1's joint score, V2's fused score and its distribution-guided
quality, the edges' relative std, and the top-k statistics of the edge
distributions. Writes a Markdown table and a scatter picture.

    python tools/quality_correlation.py \\
        --model GFL configs/Synthetic/gfl_R_18_FPN_shapes.py output/ablation_v2/GFL/seed0/model_final.pth \\
        --model "GFL V2" configs/Synthetic/gflv2_R_18_FPN_shapes.py output/ablation_v2/GFL_V2/seed0/model_final.pth \\
        --output output/quality_correlation

See ``gfl_d2/quality_study.py`` for the candidates.
"""
import argparse
import json
import os

from detectron2.config import instantiate

from gfl_d2.engine import CheckedCheckpointer, load_lazy_config
from gfl_d2.quality_study import CANDIDATES, collect, correlation_table, scatter_plot


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs=3, action="append", required=True, metavar=("NAME", "CONFIG", "WEIGHTS"),
                   help="a model: its name, LazyConfig and checkpoint ('' for the config's own init)")
    p.add_argument("--num-images", type=int, default=None, help="validation images (default: all)")
    p.add_argument("--output", default="output/quality_correlation")
    p.add_argument("--opts", nargs="*", default=[], help="overrides for every model's config")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for name, config, weights in args.model:
        for what, path in (("config", config), ("checkpoint", weights)):
            if path and not os.path.isfile(path):
                raise SystemExit(f"error: model {name!r}: {what} {path} not found")
    os.makedirs(args.output, exist_ok=True)
    results = {}
    for name, config, weights in args.model:
        cfg = load_lazy_config(config, list(args.opts))
        model = instantiate(cfg.model)
        if weights:
            CheckedCheckpointer(model).load(weights)
        dataset = instantiate(cfg.dataloader.test.dataset)
        mapper = instantiate(cfg.dataloader.test.mapper)
        results[name] = collect(model, dataset, mapper, args.num_images)
        print(f"{name}: {len(results[name]['iou'])} detections on {len(dataset[:args.num_images])} images", flush=True)
    table = correlation_table(results)
    print(table)
    with open(os.path.join(args.output, "quality_correlation.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "quality_correlation.json"), "w") as f:
        json.dump({n: {k: v.tolist() for k, v in r.items()} for n, r in results.items()}, f)
    # the score of each model, then each model's quality and its best distribution statistic
    panels = [(n, "score") for n in results]
    panels += [(n, "quality") for n, r in results.items() if "quality" in r]
    panels += [(n, "top-1") for n, r in results.items() if "top-1" in r][:1]
    scatter_plot(results, panels, os.path.join(args.output, "quality_vs_iou.png"))
    print(f"written to {args.output}/ (candidates: {', '.join(CANDIDATES)})")
    return results


if __name__ == "__main__":
    main()
