#!/usr/bin/env python
"""
What a Localization Distillation teacher can teach: at the ATSS positives of
the validation images, the teacher's and each model's boxes against the
ground truth (IoU, edge error), each model's edge distributions against the
teacher's (KL, the LD loss), and how often the teacher's edge is the closer
one. Writes ``<results>/<name>.json`` and ``<name>.md``.

    python tools/ld_agreement.py \\
        --teacher configs/Synthetic/gfl_R_18_FPN_shapes.py \\
            output/ld_shapes/teacher/model_final.pth \\
        --model "Student seed 0" configs/Synthetic/Distillation/gfl_R_18_half_FPN_shapes.py \\
            output/ld_shapes/Student/seed0/model_final.pth \\
        --model "Student + LD seed 0" configs/Synthetic/Distillation/gfl_R_18_half_FPN_shapes.py \\
            output/ld_shapes/Student_LD/seed0/model_final.pth \\
        --name ld_agreement_shapes
    python tools/ld_agreement.py --report --name ld_agreement_shapes   # the .md again

See ``gfl_studies/ld_agreement.py`` for the columns.
"""

import argparse
import os

from detectron2.config import instantiate

from gfl_d2.checkpoint import CheckedCheckpointer
from gfl_d2.lazy_config import load_lazy_config
from gfl_studies.ld_agreement import collect_agreement, model_specs, render
from gfl_studies.reports import add_report_arguments, machine, render_again, write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--teacher",
        nargs=2,
        metavar=("CONFIG", "WEIGHTS"),
        help="the teacher: its LazyConfig and checkpoint ('' for the config's own init)",
    )
    p.add_argument(
        "--model",
        nargs=3,
        action="append",
        metavar=("NAME", "CONFIG", "WEIGHTS"),
        help="a student: its name, LazyConfig (without a teacher) and checkpoint",
    )
    p.add_argument("--num-images", type=int, default=None, help="validation images (default: all)")
    p.add_argument(
        "--temperature", type=float, default=10.0, help="T of the LD loss column (default: 10)"
    )
    p.add_argument("--opts", nargs="*", default=[], help="overrides for every config")
    add_report_arguments(p, "ld_agreement")
    args = p.parse_args(argv)
    if not args.report and (not args.model or not args.teacher):
        p.error(
            "give --teacher CONFIG WEIGHTS and at least one --model NAME CONFIG WEIGHTS (or "
            "--report)"
        )
    if args.model and any(name == "teacher" for name, _, _ in args.model):
        p.error("--model: 'teacher' names the teacher's row; give the student another name")
    return args


def _load(name, config, weights, opts):
    for what, path in (("config", config), ("checkpoint", weights)):
        if path and not os.path.isfile(path):
            raise SystemExit(f"error: {name}: {what} {path} not found")
    cfg = load_lazy_config(config, list(opts))
    model = instantiate(cfg.model)  # a distillation config's model is the student alone
    if weights:
        CheckedCheckpointer(model).load(weights)
    return cfg, model


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return None
    cfg, teacher = _load("teacher", *args.teacher, args.opts)
    models = {
        name: _load(name, config, weights, args.opts)[1] for name, config, weights in args.model
    }
    dataset = instantiate(cfg.dataloader.test.dataset)
    mapper = instantiate(cfg.dataloader.test.mapper)
    table = collect_agreement(models, teacher, dataset, mapper, args.temperature, args.num_images)
    setup = dict(
        machine("cpu"),
        images=len(dataset[: args.num_images]),
        temperature=args.temperature,
        teacher=dict(config=args.teacher[0], weights=args.teacher[1]),
        models=model_specs(args.model),
    )
    text = write_report(args.results, args.name, dict(setup=setup, table=table), render)
    print(text)
    return table


if __name__ == "__main__":
    main()
