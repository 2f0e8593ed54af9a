#!/usr/bin/env python
"""
The paper's ablations on the embedded "shapes" dataset, side by side with
detectron2's own RetinaNet and FCOS: every variant trains with the same
backbone (ResNet-18 GN from scratch, 64-channel FPN P3-P7), data, schedule and
seeds, is evaluated with COCOEvaluator on shapes_val, and its inference time
per image is measured against GFL's, all models interleaved in one process.

    python tools/ablation.py                       # the default tables, 3 seeds for the main rows
    python tools/ablation.py --tables main --seeds 0 1 2 3 4
    python tools/ablation.py --list      # the variants, their configs and the runs planned
    python tools/ablation.py --jobs 2    # two training processes at a time (1 thread each)
    python tools/ablation.py --report --name ablation_shapes   # the .md again from the .json
    python tools/ablation.py --lrs 0.005 0.01 0.02 --tune-seed 10 --seeds 11 12 13 --jobs 2 \
        --output output/lr_tuning_shapes --name lr_tuning_shapes   # each at its own learning rate
    # Localization Distillation (trains its teacher first)
    python tools/ablation.py --tables ld --iters 1600 --jobs 2

Each finished run leaves ``<output>/<variant>/seed<k>/result.json``; running
the same command again skips those and resumes an interrupted run from its
last checkpoint. After every run the report is written: every finished run
in ``<results>/<name>.json``, the tables in ``<name>.md`` (also printed at
the end), so they are never further behind than one run.

With ``--lrs`` the study tunes the learning rate instead: each of
``--variants`` (default RetinaNet, FCOS, ATSS, GFL) trains at every rate
with ``--tune-seed``, the best rate on shapes_val is chosen per variant, and
the variant trains again at it with ``--seeds`` (gfl_studies.lr_tuning); the
runs of rate r go to ``<output>/lr<r>``.
"""

import argparse

from gfl_studies.ablation import (
    DEFAULT_TABLES,
    TABLES,
    VARIANTS,
    list_variants,
    render_report,
    run_lr_tuning,
    run_study,
)
from gfl_studies.reports import add_report_arguments, render_again


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tables", nargs="+", default=DEFAULT_TABLES, choices=list(TABLES))
    p.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(VARIANTS),
        metavar="NAME",
        help="run these variants only (default: the rows of --tables)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the main rows")
    p.add_argument(
        "--sweep-seeds", nargs="+", type=int, default=[0], help="seeds of the sweep rows"
    )
    p.add_argument("--iters", type=int, default=500, help="training iterations of every run")
    p.add_argument("--batch", type=int, default=8, help="images per iteration")
    p.add_argument("--jobs", type=int, default=1, help="training processes at a time")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0: 2 / jobs, at least 1)"
    )
    p.add_argument(
        "--timing-images", type=int, default=100, help="val images per model in the timing pass"
    )
    p.add_argument("--timing-rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument(
        "--output",
        default="output/ablation",
        help="folder of the runs (checkpoints, logs, result.json)",
    )
    p.add_argument(
        "--list", action="store_true", help="print the variants and the runs planned, and exit"
    )
    p.add_argument(
        "--lrs",
        nargs="+",
        type=float,
        default=None,
        help="tune the learning rate over these values (see above) instead of running --tables",
    )
    p.add_argument(
        "--tune-seed", type=int, default=10, help="with --lrs: the seed of the tuning runs"
    )
    p.add_argument(
        "--opts", nargs="*", default=[], help="extra overrides for every run (e.g. smaller data)"
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="CHECKPOINT",
        help="the LD rows' teacher (a trained configs/Synthetic/gfl_R_18_FPN_shapes.py); default: "
        "trained into <output>/teacher on that config's own schedule",
    )
    p.add_argument(
        "--teacher-seed", type=int, default=0, help="seed of the teacher this study trains"
    )
    p.add_argument(
        "--teacher-opts",
        nargs="*",
        default=[],
        help="extra overrides of the teacher's training run",
    )
    add_report_arguments(p, "ablation")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        return list_variants(args)
    if args.report:
        print(render_again(args.results, args.name, render_report))
        return None
    if args.lrs:
        return run_lr_tuning(args)
    run_study(args)


if __name__ == "__main__":
    main()
