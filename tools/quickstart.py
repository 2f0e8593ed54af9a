#!/usr/bin/env python
"""
Measure the quick start as a new user meets it (gfl_studies.quickstart):
``--runs`` times, clone the repository's committed state into a fresh folder,
run ``python tools/train_net.py`` there (the dataset generated on the way),
time it, read its AP from its metrics.json and its seed from its log; write the report
``<results>/<name>.json`` and ``.md`` with the targets (AP >= 42 in every
run, at most 10 minutes each). Run it on a quiet machine: the load average
before each run is recorded.

    python tools/quickstart.py --runs 3 --name quickstart_cpu_2cores
    python tools/quickstart.py --report --name quickstart_cpu_2cores   # the .md again

Arguments after ``--`` are appended to the command (a study of the quick
start's settings; the report shows the command measured).
"""

import argparse
import os
import tempfile

from gfl_studies import quickstart
from gfl_studies.reports import add_report_arguments, render_again

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repo", default=REPOSITORY, help="the repository to clone (default: this one)")
    p.add_argument(
        "--workdir", default="", help="where the clones go (default: a temporary folder)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS of the runs (0: unset, as for a user)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed")
    p.add_argument("--keep", action="store_true", help="keep the clones (outputs, datasets)")
    add_report_arguments(p, "quickstart")
    p.add_argument("args", nargs="*", help="after --: appended to `python tools/train_net.py`")
    args = p.parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, quickstart.render))
        return
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    state = quickstart.repository_state(args.repo)
    if state["dirty"]:
        print(
            f"note: {args.repo} has uncommitted changes; the clone measures commit "
            f"{state['commit'][:7]}"
        )
    workdir = args.workdir or tempfile.mkdtemp(prefix="gfl_quickstart_")
    runs = []
    command = "python " + " ".join(["tools/train_net.py", *args.args])
    for i in range(args.runs):
        print(f"[{i + 1}/{args.runs}] {command} in a fresh clone of {state['commit'][:7]}")
        runs.append(
            quickstart.run_once(
                args.repo,
                os.path.join(workdir, f"run{i + 1}"),
                args.args,
                threads=args.threads,
                timeout=args.timeout,
                keep=args.keep,
            )
        )
        quickstart.write(args.results, args.name, runs, command, state)
    print(render_again(args.results, args.name, quickstart.render))


if __name__ == "__main__":
    main()
