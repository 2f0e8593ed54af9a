#!/usr/bin/env python
"""
Why detectron2's FCOS sometimes dies when trained from scratch (see
gfl_studies.fcos_collapse): trains it unchanged, with the ablation's
backbone, data and schedule, for seeds that collapse and seeds that learn,
records every logged iteration how many positives have all four predicted
distances clamped to 0 by Box2BoxTransformLinear's ReLU, and writes the
report ``<results>/<name>.json`` and ``.md``.

    python tools/fcos_collapse.py --seeds 7 0 --jobs 2 --name fcos_collapse_shapes
    python tools/fcos_collapse.py --report --name fcos_collapse_shapes   # the .md again

Trailing key=value pairs are passed to every run (e.g. optimizer.lr=0.005).
``--settings`` compares detectron2's documented stability settings instead
(gfl_studies.fcos_collapse.SETTINGS: gradient clipping, a longer warm-up, a
lower rate), each on every seed, with a table of all the runs first:

    python tools/fcos_collapse.py --seeds 7 --jobs 2 --settings all \\
        --name fcos_collapse_settings_shapes

Finished runs (``<output>/<variant>/seed<k>/result.json``) are not trained again.
"""

import argparse

from gfl_studies import ablation, fcos_collapse
from gfl_studies.reports import add_report_arguments, render_again

RECORDING_FCOS = "model._target_=gfl_studies.fcos_collapse.ClampRecordingFCOS"


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[7, 0])
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--jobs", type=int, default=1, help="training processes at a time")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0: 2 / jobs, at least 1)"
    )
    p.add_argument(
        "--settings",
        nargs="+",
        metavar="SETTING",
        help="compare these settings (or 'all'): " + "; ".join(fcos_collapse.SETTINGS),
    )
    p.add_argument("--output", default="output/fcos_collapse")
    add_report_arguments(p, "fcos_collapse")
    p.add_argument("opts", nargs="*", help="config overrides for every run, key=value")
    args = p.parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, fcos_collapse.render))
        return
    study = argparse.Namespace(
        tables=["main"],
        variants=["FCOS"],
        seeds=args.seeds,
        sweep_seeds=args.seeds,
        iters=args.iters,
        batch=args.batch,
        jobs=args.jobs,
        threads=args.threads,
        output=args.output,
        opts=[RECORDING_FCOS] + list(args.opts),
    )
    variants = [("FCOS", "")]
    if args.settings:
        labels = list(fcos_collapse.SETTINGS) if args.settings == ["all"] else args.settings
        unknown = [x for x in labels if x not in fcos_collapse.SETTINGS]
        if unknown:
            p.error(
                f"--settings: unknown {unknown}; known: {list(fcos_collapse.SETTINGS)} or 'all'"
            )
        config, overrides, what = ablation.VARIANTS["FCOS"]
        variants = [(f"FCOS, {label}", label) for label in labels]
        for name, label in variants:  # a variant per setting: its own runs folder
            ablation.VARIANTS[name] = (
                config,
                list(overrides) + fcos_collapse.SETTINGS[label],
                f"{what}; {label}",
            )
    todo = [
        (name, s)
        for s in args.seeds
        for name, _ in variants
        if s not in ablation.finished_seeds(study, name)
    ]
    ablation.run_all(study, todo, after_each=lambda: None)
    runs = []
    for name, label in variants:
        for result in ablation.load_results(study, name):
            if result["seed"] in args.seeds:
                lr = next(
                    (
                        float(o.split("=", 1)[1])
                        for o in reversed(result["overrides"])
                        if o.startswith("optimizer.lr=")
                    ),
                    None,
                )
                series = fcos_collapse.read_series(ablation.run_dir(study, name, result["seed"]))
                runs.append(fcos_collapse.summarize_run(dict(result, lr=lr), series, setting=label))
    settings = f"{args.iters} iterations, batch {args.batch}, the ablation's schedule" + (
        f"; {' '.join(args.opts)}" if args.opts else "; the config's learning rate"
    )
    print(fcos_collapse.write(args.results, args.name, runs, settings))


if __name__ == "__main__":
    main()
