#!/usr/bin/env python
"""
Train NanoDet-Plus-m and the quick start's ResNet-18 GFL from scratch on the
embedded shapes dataset, each seed in fresh clones, and write the report
``<results>/<name>.json`` and ``.md`` (AP, training time; gfl_studies.edge_training).
Run it on a quiet machine: the times are the point.

    python tools/edge_training.py --seeds 1 2 3 --name edge_training_cpu_2cores
    python tools/edge_training.py --seeds 3 --add --name edge_training_cpu_2cores  # one more seed
    python tools/edge_training.py --report --name edge_training_cpu_2cores
"""

import argparse
import os
import tempfile

from gfl_studies import edge_training
from gfl_studies.reports import add_report_arguments, render_again

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument(
        "--models",
        nargs="+",
        default=list(edge_training.MODELS),
        choices=list(edge_training.MODELS),
    )
    p.add_argument("--repo", default=REPOSITORY, help="the repository to clone (default: this one)")
    p.add_argument("--workdir", default="", help="where the clones go (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the clones (trained weights)")
    p.add_argument(
        "--add",
        action="store_true",
        help="keep the report's earlier runs (other seeds, each with its commit) and add these",
    )
    add_report_arguments(p, "edge_training")
    args = p.parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, edge_training.render))
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="gfl_edge_training_")
    runs = []
    earlier = []
    if args.add:
        replaced = [dict(model=m, seed=s) for s in args.seeds for m in args.models]
        earlier = edge_training.earlier_runs(args.results, args.name, replaced)
    for seed in args.seeds:
        runs += edge_training.run_seed(args.repo, workdir, seed, args.models, args.keep)
        edge_training.write(args.results, args.name, earlier + runs, args.models, args.repo)
    print(render_again(args.results, args.name, edge_training.render))


if __name__ == "__main__":
    main()
