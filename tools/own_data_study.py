#!/usr/bin/env python
"""
GFL against detectron2's FCOS on a dataset folder, trained with the documented
command over seeds, with the bins as configured and as the bin check advises
(gfl_studies.own_data_study). Without --root it generates the second dataset
("bars": non-square images of varying size, four classes with ids 3/7/11/20,
thin bars to small blobs, some empty images) in --layout first.

    python tools/own_data_study.py --output output/own_data_study --seeds 0,1,2 --bins-seeds 1 \
        train.max_iter=500 dataloader.train.total_batch_size=8
    python tools/own_data_study.py --report --name own_data_study_bars   # the .md again
    python tools/own_data_study.py --lrs 0.005 0.01 0.02 --tune-seed 10 --seeds 11,12,13 --jobs 2 \
        --output output/own_data_lr --name own_data_lr_tuning_bars \
        train.max_iter=500   # each at its own lr

With ``--lrs``, GFL and FCOS are each trained at every rate with
``--tune-seed``, then at the rate with the best validation AP with
``--seeds`` (gfl_studies.lr_tuning), instead of the study above.

Trailing key=value pairs are passed to every run (after the study's own:
dataset.min_size=0, final evaluation only). The runs go to --output, the
report to ``<results>/<name>.json`` and ``.md``.
"""

import argparse
import os

from gfl_studies.bars import BarsConfig, write_bars_dataset
from gfl_studies.own_data_study import render_report, run_own_data_lr_tuning, run_own_data_study
from gfl_studies.reports import add_report_arguments, render_again


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", default="output/own_data_study")
    p.add_argument(
        "--root", help="a dataset folder (COCO, VOC or YOLO layout); default: generate bars"
    )
    p.add_argument(
        "--layout",
        default="yolo",
        choices=("coco", "voc", "yolo"),
        help="layout of the generated dataset",
    )
    p.add_argument("--num-train", type=int, default=1500)
    p.add_argument("--num-val", type=int, default=300)
    p.add_argument(
        "--width",
        type=int,
        nargs=2,
        default=[80, 160],
        metavar=("MIN", "MAX"),
        help="image widths of the generated dataset",
    )
    p.add_argument("--height", type=int, nargs=2, default=[56, 128], metavar=("MIN", "MAX"))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated")
    p.add_argument(
        "--bins-seeds",
        type=int,
        default=None,
        help="run GFL with the fitted bins for the first N seeds only (default: all)",
    )
    p.add_argument(
        "--lrs",
        nargs="+",
        type=float,
        default=None,
        help="tune the learning rate over these values (see above) instead of the study",
    )
    p.add_argument(
        "--tune-seed", type=int, default=10, help="with --lrs: the seed of the tuning runs"
    )
    p.add_argument("--jobs", type=int, default=1, help="with --lrs: training processes at a time")
    add_report_arguments(p, "own_data_study")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides for every run, key=value"
    )
    args = p.parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render_report))
        return
    root = args.root
    if root is None:
        root = os.path.join(args.output, f"bars_{args.layout}")
        if not os.path.isdir(root):
            print(
                f"generating bars ({args.num_train} train, {args.num_val} val) in {root} "
                f"({args.layout} layout)"
            )
            cfg = BarsConfig(
                min_width=args.width[0],
                max_width=args.width[1],
                min_height=args.height[0],
                max_height=args.height[1],
            )
            write_bars_dataset(
                root,
                args.layout,
                splits=(("train", args.num_train, 0), ("val", args.num_val, 1)),
                cfg=cfg,
            )
    common = [
        "dataset.min_size=0",
        "train.eval_period=0",
        "train.checkpointer.period=100000",
    ] + list(args.opts)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.lrs:
        print(
            run_own_data_lr_tuning(
                os.path.abspath(root),
                args.output,
                args.lrs,
                args.tune_seed,
                seeds,
                common,
                args.jobs,
                args.results,
                args.name,
            )
        )
        return
    print(
        run_own_data_study(
            os.path.abspath(root),
            args.output,
            seeds,
            common,
            args.bins_seeds,
            args.results,
            args.name,
        )
    )


if __name__ == "__main__":
    main()
