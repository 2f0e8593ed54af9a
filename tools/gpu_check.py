#!/usr/bin/env python
"""
The GPU check behind ``tools/gpu_check.sh`` (see there for what it runs;
the steps are in ``gfl_studies.gpu_check``). Each step runs in its own
process with a time limit, so that one failure does not hide the others.
Logs, checkpoints and exports go to --output; the summary table to
``<results>/<name>.json`` and ``.md``, the benchmark's report beside it
(``<name>_benchmark.json`` / ``.md``); --results defaults to
projects/GFL/results, and to --output with --smoke.

    python tools/gpu_check.py --name gpu_check_h200            # on a CUDA machine
    python tools/gpu_check.py --smoke --output /tmp/gc          # tiny sizes, on the CPU too: checks the script
    python tools/gpu_check.py --report --name gpu_check_h100   # the .md again from the .json
"""

import argparse
import sys

from gfl_studies.gpu_check import render, run_gpu_check
from gfl_studies.reports import DEFAULT_RESULTS, add_report_arguments, render_again


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", default="gpu_check", help="folder for logs, checkpoints and exports")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes and few iterations; allowed without a GPU"
    )
    p.add_argument(
        "--iters", type=int, default=None, help="training iterations per precision (default 300)"
    )
    p.add_argument(
        "--skip", nargs="*", default=[], choices=["tests", "train", "benchmark", "peer", "export"]
    )
    add_report_arguments(p, "gpu_check", results=None)
    args = p.parse_args(argv)
    # a smoke run checks the script, it measures nothing: its report stays with its logs
    args.results = args.results or (args.output if args.smoke else DEFAULT_RESULTS)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return 0
    return run_gpu_check(args)


if __name__ == "__main__":
    sys.exit(main())
