"""
The paper's ablations on the embedded "shapes" dataset (``tools/ablation.py``
is the command line): the variants (config files, see ``configs/Synthetic``),
the tables, training each run in a child process (``python -m
gfl_d2.training``), evaluation, interleaved inference timing, and the report
(``<name>.json`` with every run, ``<name>.md`` with the tables, see
:mod:`gfl_studies.reports`). Resumable: a run with a ``result.json`` is done.
"""

import argparse
import ast
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Dict, Optional

from gfl_d2.model_zoo import get_config_file

from .lr_tuning import collapsed, in_parallel, tune_then_seeds
from .lr_tuning import render as render_lr_tuning
from .reports import machine, mean_std, read_metrics_series, write_report

SHAPES = "Synthetic/"  # under the packaged configs (gfl_d2.model_zoo)
GFL_CFG = SHAPES + "gfl_R_18_FPN_shapes.py"
ATSS_CFG = SHAPES + "atss_R_18_FPN_shapes.py"

ABLATIONS = SHAPES + "Ablations/"
DISTILLATION = SHAPES + "Distillation/"
# Localization Distillation's teacher: the paper-settings model, trained on its own (default)
# schedule
TEACHER_CFG = GFL_CFG
# what GFL V2's quality predictor outputs at the positives, logged every iteration
# (gfl_d2.modeling.meta_arch)
QUALITY_SERIES = ("dgqp_quality_mean", "dgqp_quality_std")

# name -> (config file, overrides, what it is). Each variant is a config file
# (its docstring says what it is); nothing else differs between them.
_VARIANT_CONFIGS = OrderedDict(
    [
        ("RetinaNet", SHAPES + "retinanet_R_18_FPN_shapes.py"),
        ("FCOS", SHAPES + "fcos_R_18_FPN_shapes.py"),
        ("ATSS", ATSS_CFG),
        ("ATSS+QFL", ABLATIONS + "atss_qfl_R_18_FPN_shapes.py"),
        ("ATSS+DFL", ABLATIONS + "atss_dfl_R_18_FPN_shapes.py"),
        ("GFL", GFL_CFG),
        ("RetinaNet+QFL", SHAPES + "retinanet_qfl_R_18_FPN_shapes.py"),
        ("FCOS+QFL", SHAPES + "fcos_qfl_R_18_FPN_shapes.py"),
        ("GFL β=0", ABLATIONS + "gfl_beta0_R_18_FPN_shapes.py"),
        ("GFL β=1", ABLATIONS + "gfl_beta1_R_18_FPN_shapes.py"),
        ("GFL β=3", ABLATIONS + "gfl_beta3_R_18_FPN_shapes.py"),
        ("GFL n=4", ABLATIONS + "gfl_n4_R_18_FPN_shapes.py"),
        ("GFL n=8", ABLATIONS + "gfl_n8_R_18_FPN_shapes.py"),
        ("GFL n=24", ABLATIONS + "gfl_n24_R_18_FPN_shapes.py"),
        ("GFL Δ=0.5", ABLATIONS + "gfl_delta0_5_R_18_FPN_shapes.py"),
        ("GFL Δ=2", ABLATIONS + "gfl_delta2_R_18_FPN_shapes.py"),
        ("GFL no DFL", ABLATIONS + "gfl_no_dfl_R_18_FPN_shapes.py"),
        ("FL+IoU branch", ABLATIONS + "fl_iou_branch_R_18_FPN_shapes.py"),
        ("FL, no quality", ABLATIONS + "fl_no_quality_R_18_FPN_shapes.py"),
        ("ATSS+QFL, ctr-weighted", ABLATIONS + "atss_qfl_ctr_weighted_R_18_FPN_shapes.py"),
        ("GFL V2", SHAPES + "gflv2_R_18_FPN_shapes.py"),
        ("GFL V2, init 0.1", ABLATIONS + "gflv2_init0_1_R_18_FPN_shapes.py"),
        ("Student", DISTILLATION + "gfl_R_18_half_FPN_shapes.py"),
        ("Student + LD", DISTILLATION + "gfl_R_18_half_FPN_shapes_ld.py"),
    ]
)
# the variants taught by the teacher (its checkpoint is given to them at run time)
LD_VARIANTS = ("Student + LD",)


def _what(config):
    """The first sentence of a config file's docstring."""
    doc = ast.get_docstring(ast.parse(open(get_config_file(config), encoding="utf-8").read())) or ""
    return " ".join(doc.split()).split(". ")[0].rstrip(".")


VARIANTS = OrderedDict(
    (name, (config, [], _what(config))) for name, config in _VARIANT_CONFIGS.items()
)

# tables: title, rows (a row named like a main variant reuses its runs), whose seeds
TABLES = OrderedDict(
    [
        (
            "main",
            (
                "GFL against ATSS, FCOS and RetinaNet (paper Table 3)",
                ["RetinaNet", "FCOS", "ATSS", "ATSS+QFL", "ATSS+DFL", "GFL"],
                "main",
            ),
        ),
        (
            "qfl",
            (
                "QFL as a drop-in for detectron2's detectors (paper Table 1b)",
                ["RetinaNet", "RetinaNet+QFL", "FCOS", "FCOS+QFL", "ATSS", "ATSS+QFL"],
                "main",
            ),
        ),
        ("beta", ("QFL β (paper Table 1c)", ["GFL β=0", "GFL β=1", "GFL", "GFL β=3"], "sweep")),
        (
            "n",
            (
                "number of bins n (paper Table 2b)",
                ["GFL n=4", "GFL n=8", "GFL", "GFL n=24"],
                "sweep",
            ),
        ),
        ("delta", ("bin width Δ (paper Table 2c)", ["GFL Δ=0.5", "GFL", "GFL Δ=2"], "sweep")),
        (
            "quality",
            (
                "quality representation and DFL (paper Tables 1a, 2a)",
                [
                    "FL, no quality",
                    "ATSS",
                    "FL+IoU branch",
                    "ATSS+QFL",
                    "ATSS+QFL, ctr-weighted",
                    "GFL no DFL",
                    "GFL",
                ],
                "sweep",
            ),
        ),
        (
            "v2",
            (
                "GFL V2 against V1 (the distribution-guided quality predictor)",
                ["GFL", "GFL V2"],
                "main",
            ),
        ),
        (
            "v2init",
            (
                "GFL V2's predictor initialisation (a diagnostic of the short schedule)",
                ["GFL", "GFL V2", "GFL V2, init 0.1"],
                "main",
            ),
        ),
        (
            "ld",
            (
                "Localization Distillation: the quick-start architecture with n = 16, alone and "
                "taught by the "
                "paper-settings model",
                ["Student", "Student + LD"],
                "main",
            ),
        ),
    ]
)
DEFAULT_TABLES = ["main", "qfl", "beta", "n", "delta", "v2"]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
BACKBONE = "ResNet-18 GN from scratch, FPN P3-P7 with 64 channels"


def slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", name.replace("β", "beta").replace("Δ", "delta")).strip("_")


def schedule_overrides(iters, batch):
    """
    The shapes schedule scaled to `iters`: LR steps at 77% and 91%, warm-up 50 iterations
    (5-25%).
    """
    if iters < 4:
        raise SystemExit(f"--iters must be at least 4 (two LR steps before the end), got {iters}")
    first = max(1, min(int(iters * 0.77), iters - 2))
    second = max(first + 1, int(iters * 0.91))
    return [
        f"train.max_iter={iters}",
        f"lr_multiplier.scheduler.milestones=[{first},{second}]",
        f"lr_multiplier.scheduler.num_updates={iters}",
        f"lr_multiplier.warmup_length={min(0.25, max(0.05, 50 / iters)):.4f}",
        f"dataloader.train.total_batch_size={batch}",
        f"train.checkpointer.period={max(50, iters // 5)}",
        "train.eval_period=0",
        "train.log_period=20",
    ]


def plan_runs(args):
    """[(variant, seed)] in the order to run: every variant's first seed first."""
    wanted = OrderedDict()
    for table in args.tables:
        _, rows, kind = TABLES[table]
        seeds = args.seeds if kind == "main" else args.sweep_seeds
        for row in rows:
            # a row shared with a main table keeps the main table's seeds
            if row in wanted and len(wanted[row]) >= len(seeds):
                continue
            wanted[row] = list(seeds)
    if args.variants:
        wanted = OrderedDict((k, v) for k, v in wanted.items() if k in args.variants)
        for name in args.variants:
            wanted.setdefault(name, list(args.sweep_seeds))
    depth = max((len(s) for s in wanted.values()), default=0)
    return [
        (name, seeds[i]) for i in range(depth) for name, seeds in wanted.items() if i < len(seeds)
    ]


def run_dir(args, name, seed):
    return os.path.join(args.output, slug(name), f"seed{seed}")


def run_overrides(args, name, seed, out):
    config, overrides, _ = VARIANTS[name]
    if name in LD_VARIANTS:
        overrides = list(overrides) + [
            f"distillation.teacher.checkpoint={teacher_checkpoint(args)}"
        ]
    return config, (
        schedule_overrides(args.iters, args.batch)
        + [f"train.seed={seed}", f"train.output_dir={out}", "dataloader.evaluator=null"]
        + list(overrides)
        + list(args.opts)
    )


# ------------------------------------------------------------------ the distillation teacher
def teacher_dir(args):
    return os.path.join(args.output, "teacher")


def teacher_checkpoint(args):
    """``--teacher``, or the teacher this study trains into ``<output>/teacher``."""
    return getattr(args, "teacher", None) or os.path.join(teacher_dir(args), "model_final.pth")


def teacher_overrides(args):
    """
    The teacher run: its config's own schedule, the study's data options, then
    ``--teacher-opts``.
    """
    return (
        [
            f"train.seed={args.teacher_seed}",
            f"train.output_dir={teacher_dir(args)}",
            "dataloader.evaluator=null",
            "train.eval_period=0",
        ]
        + list(args.opts)
        + list(args.teacher_opts)
    )


def ensure_teacher(args):
    """
    The teacher of the LD rows: ``--teacher`` as given, or trained here (resuming)
    on its config's default schedule and evaluated on shapes_val; its record
    (``<output>/teacher/result.json``) goes into the report.
    """
    if getattr(args, "teacher", None):
        if not os.path.isfile(args.teacher):
            raise SystemExit(f"--teacher: no checkpoint at {args.teacher}")
        return dict(config=TEACHER_CFG, checkpoint=args.teacher, metrics=None)
    out = teacher_dir(args)
    record_path = os.path.join(out, "result.json")
    if os.path.isfile(record_path):
        with open(record_path) as f:
            return json.load(f)
    os.makedirs(out, exist_ok=True)
    print(f"LD teacher: training {TEACHER_CFG} on its own schedule into {out}", flush=True)
    # it trains alone, before the rows: it gets the threads of all the jobs
    threads = (args.threads or max(1, 2 // args.jobs)) * args.jobs
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable,
        "-m",
        "gfl_d2.training",
        "--config-file",
        get_config_file(TEACHER_CFG),
        "--resume",
        *teacher_overrides(args),
    ]
    with open(os.path.join(out, "train_log.txt"), "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"LD teacher: training failed (exit {proc.returncode}); see {out}/train_log.txt"
        )
    record = dict(
        config=TEACHER_CFG,
        checkpoint=teacher_checkpoint(args),
        overrides=teacher_overrides(args),
        metrics=_evaluate_config(
            TEACHER_CFG,
            teacher_overrides(args),
            teacher_checkpoint(args),
            os.path.join(out, "eval"),
            args.jobs,
        ),
    )
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"LD teacher: AP {record['metrics']['AP']:.2f}", flush=True)
    return record


# ------------------------------------------------------------------ one run
_PROGRESS = re.compile(r"eta: (\S+)\s+iter: (\d+)\s+total_loss: (\S+)")


def printed_progress(line: str) -> Optional[Dict[str, object]]:
    """
    The progress in a line of detectron2's ``CommonMetricPrinter`` (None for
    other lines): ``iteration`` (from 0), ``total_loss`` and ``eta`` as
    printed. Shown while a child trains, as its output streams; the run's
    ``metrics.json`` holds the same values only as its writer flushes them.
    """
    m = _PROGRESS.search(line)
    if m is None:
        return None
    return dict(iteration=int(m.group(2)), total_loss=m.group(3), eta=m.group(1))


def train(args, name, seed, log_prefix):
    """Train (resuming) in a child process; returns its wall time."""
    out = run_dir(args, name, seed)
    os.makedirs(out, exist_ok=True)
    config, overrides = run_overrides(args, name, seed, out)
    threads = args.threads or max(1, 2 // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable,
        "-m",
        "gfl_d2.training",
        "--config-file",
        get_config_file(config),
        "--resume",
        *overrides,
    ]
    start = time.time()
    with open(os.path.join(out, "train_log.txt"), "a") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for line in proc.stdout:
            log.write(line)
            shown = printed_progress(line)
            if shown and args.jobs == 1:
                print(
                    f"\r{log_prefix} iter {shown['iteration'] + 1}/{args.iters} "
                    f"loss {shown['total_loss']} eta {shown['eta']}   ",
                    end="",
                    flush=True,
                )
        proc.wait()
    if args.jobs == 1:
        print()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name} seed {seed}: training failed (exit {proc.returncode}); see {out}/train_log.txt"
        )
    return time.time() - start


def _build(config, overrides, checkpoint):
    """A config (its evaluator kept) and its model with ``checkpoint``'s weights, in eval mode."""
    from detectron2.config import instantiate

    from gfl_d2.checkpoint import CheckedCheckpointer
    from gfl_d2.lazy_config import load_lazy_config

    cfg = load_lazy_config(
        get_config_file(config), [o for o in overrides if not o.startswith("dataloader.evaluator")]
    )
    model = instantiate(cfg.model)  # the student alone: a distilled model is a plain GFL
    CheckedCheckpointer(model).load(checkpoint)
    return cfg, model.eval()


def build_trained(args, name, seed):
    """The config and the trained model of a finished run."""
    out = run_dir(args, name, seed)
    config, overrides = run_overrides(args, name, seed, out)
    # the training run had no evaluator; this one has the config's
    return _build(config, overrides, os.path.join(out, "model_final.pth"))


def _evaluate_config(config, overrides, checkpoint, output_dir, jobs):
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset

    cfg, model = _build(config, overrides, checkpoint)
    cfg.dataloader.evaluator.output_dir = output_dir
    if jobs > 1:
        # forking loader workers from a process whose other threads run jobs can deadlock (seen: a
        # worker
        # waiting forever on a lock held at the fork); evaluating in this process's thread needs
        # none
        cfg.dataloader.test.num_workers = 0
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    return {k: float(v) for k, v in results["bbox"].items()}


def evaluate(args, name, seed):
    """COCO metrics of a finished run on shapes_val."""
    out = run_dir(args, name, seed)
    config, overrides = run_overrides(args, name, seed, out)
    return _evaluate_config(
        config,
        overrides,
        os.path.join(out, "model_final.pth"),
        os.path.join(out, "eval"),
        args.jobs,
    )


def do_run(args, name, seed, index, total):
    out = run_dir(args, name, seed)
    prefix = f"[{index}/{total}] {name} seed {seed}:"
    print(f"{prefix} training ({VARIANTS[name][2]})", flush=True)
    seconds = train(args, name, seed, prefix)
    metrics = evaluate(args, name, seed)
    config, overrides = run_overrides(args, name, seed, out)
    result = dict(
        variant=name,
        seed=seed,
        config=config,
        overrides=overrides,
        metrics=metrics,
        train_seconds=round(seconds, 1),
        iters=args.iters,
        batch=args.batch,
    )
    quality = read_metrics_series(out, QUALITY_SERIES)
    if quality:  # a V2: how its predictor's output moved over training
        result["quality_series"] = quality
    tmp = os.path.join(out, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, os.path.join(out, "result.json"))  # a run counts as done only once this exists
    print(
        f"{prefix} AP {metrics['AP']:.2f} (AP50 {metrics['AP50']:.2f}), {seconds / 60:.1f} min",
        flush=True,
    )
    return result


# ------------------------------------------------------------------ timing
def measure_inference(args, names):
    """Median seconds per image (batch 1) of each variant's first trained model."""
    import torch
    from detectron2.config import instantiate

    models = {}
    for name in names:
        seeds = finished_seeds(args, name)
        if seeds:
            models[name] = build_trained(args, name, seeds[0])
    if not models:
        return {}
    cfg = next(iter(models.values()))[0]
    inputs = []
    for batch in instantiate(cfg.dataloader.test):
        inputs.extend(batch)
        if len(inputs) >= args.timing_images:
            break
    times = {name: [] for name in models}
    rng = random.Random(0)
    order = list(models)
    with torch.no_grad():
        for _, model in models.values():  # warm-up
            for x in inputs[:5]:
                model([x])
        # interleaved image by image, in a shuffled order, so that drifts of the
        # machine's speed hit every model alike; the median drops outliers
        for _ in range(args.timing_rounds):
            for x in inputs:
                rng.shuffle(order)
                for name in order:
                    start = time.perf_counter()
                    models[name][1]([x])
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_training_steps(args, names, warmup=2):
    """
    Median seconds of a training step (forward, assignment, losses, backward) of
    each variant at initialisation, on the same ``4 * --timing-rounds`` batches,
    the variants alternating step by step in a shuffled order: what a teacher's
    forward adds to a step.
    """
    steps = 4 * args.timing_rounds
    import torch
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage

    from gfl_d2.lazy_config import load_lazy_config
    from gfl_d2.teacher import distill_from_lazy_config

    models, batches = {}, []
    for name in names:
        config, overrides = run_overrides(args, name, 0, os.path.join(args.output, "timing"))
        cfg = load_lazy_config(
            get_config_file(config),
            [o for o in overrides if not o.startswith("dataloader.evaluator")],
        )
        torch.manual_seed(0)
        model = instantiate(cfg.model)
        # an LD row trains the student with its teacher, as the training entry point does
        models[name] = (distill_from_lazy_config(cfg, model) or model).train()
        if not batches:
            cfg.dataloader.train.num_workers = 0
            loader = iter(instantiate(cfg.dataloader.train))
            batches = [next(loader) for _ in range(steps + warmup)]
    times = {name: [] for name in models}
    rng, order = random.Random(0), list(models)
    for i, batch in enumerate(batches):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            with EventStorage():
                losses = models[name](batch)
                sum(losses.values()).backward()
            elapsed = time.perf_counter() - start
            models[name].zero_grad(set_to_none=True)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


# ------------------------------------------------------------------ report
def finished_seeds(args, name):
    base = os.path.join(args.output, slug(name))
    if not os.path.isdir(base):
        return []
    return sorted(
        int(d[4:])
        for d in os.listdir(base)
        if d.startswith("seed") and os.path.isfile(os.path.join(base, d, "result.json"))
    )


def load_results(args, name):
    out = []
    for seed in finished_seeds(args, name):
        with open(os.path.join(run_dir(args, name, seed), "result.json")) as f:
            out.append(json.load(f))
    return out


def collect_results(args):
    """The report's data: the setup, every finished run of the planned variants, the timing."""
    names = list(OrderedDict.fromkeys(name for name, _ in plan_runs(args)))
    timing_file = os.path.join(args.output, "timing.json")
    timing = json.load(open(timing_file)) if os.path.isfile(timing_file) else {}
    steps_file = os.path.join(args.output, "training_steps.json")
    steps = json.load(open(steps_file)) if os.path.isfile(steps_file) else {}
    runs = [r for name in names for r in load_results(args, name)]
    setup = dict(
        dataset="shapes: 3000 train / 300 val images, 128 px",
        backbone=BACKBONE,
        iters=args.iters,
        batch=args.batch,
        **machine("cpu"),
    )
    data = dict(
        setup=setup,
        tables=list(args.tables),
        runs=runs,
        timing=dict(iters=args.iters, seconds_per_image=timing) if timing else {},
    )
    if any(name in LD_VARIANTS for name in names):
        record = os.path.join(teacher_dir(args), "result.json")
        teacher = json.load(open(record)) if os.path.isfile(record) else None
        if teacher is None and getattr(args, "teacher", None):
            teacher = dict(config=TEACHER_CFG, checkpoint=args.teacher, metrics=None)
        data["teacher"] = teacher
    if steps:
        data["training_step_seconds"] = steps
    return data


def _table(title, rows, runs, relative_time):
    lines = [
        f"### {title}",
        "",
        "| variant | " + " | ".join(METRICS) + " | seeds | collapsed | time |",
        "|---|" + "---:|" * (len(METRICS) + 3),
    ]
    for row in rows:
        results = [r for r in runs if r["variant"] == row]
        if not results:
            lines.append(f"| {row} | " + " | ".join("…" for _ in METRICS) + " | 0 | | |")
            continue
        cells = [mean_std([r["metrics"].get(m, float("nan")) for r in results]) for m in METRICS]
        time_cell = f"{relative_time[row]:.2f}" if row in relative_time else ""
        lines.append(
            f"| {row} | "
            + " | ".join(cells)
            + f" | {len(results)} | {collapsed(results)} | {time_cell} |"
        )
    return lines + [""]


def _per_seed(runs, iters):
    """One line: the AP of every seed of the variants run with more than one seed."""
    names = [n for n in VARIANTS if sum(r["variant"] == n for r in runs) > 1]
    if not names:
        return []
    aps = [
        "{} {}".format(
            n, " / ".join(f"{r['metrics']['AP']:.2f}" for r in runs if r["variant"] == n)
        )
        for n in names
    ]
    return [f"AP per seed at {iters} iterations: " + "; ".join(aps) + ".", ""]


def _quality_spread(runs, iters, at=(0.1, 0.25, 0.5, 0.75, 1.0)):
    """
    GFL V2's predictor output at the positives over training, per variant:
    the mean over seeds of its logged mean and of its spread (std over the
    positives), at fractions of the schedule.
    """
    rows = [n for n in VARIANTS if any(r["variant"] == n and r.get("quality_series") for r in runs)]
    if not rows:
        return []
    points = sorted({max(1, round(iters * f)) for f in at})
    lines = [
        f"GFL V2's quality predictor at the positives over {iters} iterations: mean / std over the "
        "positives of the logged iteration, each averaged over seeds.",
        "",
        "| variant | " + " | ".join(f"iteration {p}" for p in points) + " |",
        "|---|" + "---:|" * len(points),
    ]
    for name in rows:
        series = [
            r["quality_series"] for r in runs if r["variant"] == name and r.get("quality_series")
        ]
        cells = []
        for p in points:
            near = [min(s, key=lambda row: abs(row["iteration"] - p)) for s in series]
            mean = statistics.mean(row["dgqp_quality_mean"] for row in near)
            std = statistics.mean(row["dgqp_quality_std"] for row in near)
            cells.append(f"{mean:.3f} / {std:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _distillation(data):
    """The LD rows' teacher and what its forward adds to a training step."""
    lines = []
    teacher = data.get("teacher")
    if "teacher" in data:
        if teacher is None:
            lines.append("LD teacher: not trained yet.")
        else:
            ap = teacher.get("metrics") and teacher["metrics"].get("AP")
            lines.append(
                f"LD teacher: configs/{teacher['config']} on its own schedule"
                + (
                    f" ({' '.join(o for o in teacher['overrides'] if o.startswith('train.seed'))})"
                    if teacher.get("overrides")
                    else ""
                )
                + (
                    f", {ap:.1f} AP on shapes_val."
                    if ap is not None
                    else f", checkpoint {teacher['checkpoint']}."
                )
            )
    steps = data.get("training_step_seconds")
    if steps:
        names = list(steps)
        base = steps[names[0]]
        cells = "; ".join(
            f"{n} {steps[n]:.3f} s" + ("" if n == names[0] else f" ({steps[n] / base:.2f}x)")
            for n in names
        )
        lines.append(
            "Training step (forward, assignment, losses, backward; one batch, the variants "
            "alternating, "
            f"median): {cells}."
        )
    return lines + [""] if lines else []


def render(data):
    """
    The Markdown tables of an ablation report (:func:`collect_results`): the
    study's tables at its schedule, and one table per other schedule its runs
    were trained for.
    """
    setup, runs = data["setup"], data["runs"]
    seconds = data.get("timing", {}).get("seconds_per_image", {})
    relative = {k: v / seconds["GFL"] for k, v in seconds.items()} if "GFL" in seconds else {}
    main_iters = setup.get("iters") or statistics.mode(r["iters"] for r in runs)
    where = setup.get("device", setup.get("machine", "?")) + (
        f", torch {setup['torch']}" if "torch" in setup else ""
    )
    lines = [
        f"{setup.get('dataset', 'shapes')}; {setup.get('backbone', BACKBONE)}; batch "
        f"{setup.get('batch', '?')}. "
        f"Measured {setup.get('date', '?')} on {where}. Mean ± std over seeds; time: inference per "
        "image "
        "relative to GFL (batch 1, all models interleaved in one process); collapsed: runs with AP "
        "< 1.",
        "",
    ]
    at_main = [r for r in runs if r["iters"] == main_iters]
    lines += [f"## {main_iters} iterations", ""]
    for table in data["tables"]:
        title, rows, _ = TABLES[table]
        lines += _table(title, rows, at_main, relative)
    lines += (
        _per_seed(at_main, main_iters) + _quality_spread(at_main, main_iters) + _distillation(data)
    )
    for iters in sorted({r["iters"] for r in runs} - {main_iters}):
        at = [r for r in runs if r["iters"] == iters]
        rows = [name for name in VARIANTS if any(r["variant"] == name for r in at)]
        lines += [f"## {iters} iterations", ""] + _table(
            f"the variants trained for {iters} iterations", rows, at, {}
        )
        lines += _per_seed(at, iters) + _quality_spread(at, iters)
    return "\n".join(lines)


def render_report(data):
    """The Markdown of either report of this module: an ablation's or a learning-rate tuning's."""
    return render_lr_tuning(data) if "tune_seed" in data["setup"] else render(data)


def write(args):
    """Write the report of what is finished so far into ``args.results``; the Markdown."""
    return write_report(args.results, args.name, collect_results(args), render)


def list_variants(args=None):
    for name, (config, overrides, what) in VARIANTS.items():
        print(f"{name:16s} {what}\n{'':16s} configs/{config} {' '.join(overrides)}")
    if args is not None:
        runs = plan_runs(args)
        print(
            f"\n--tables {' '.join(args.tables)}: {len(runs)} runs ({len(set(n for n, _ in runs))} "
            "variants)"
        )


def run_all(args, todo, after_each=None):
    """
    Train and evaluate the runs of ``todo`` on ``args.jobs`` threads;
    ``after_each()`` (default: the report) after every run.
    """
    start, lock, finished = time.time(), threading.Lock(), []
    after_each = after_each or (lambda: write(args))

    def one(item):
        index, (name, seed) = item
        do_run(args, name, seed, index, len(todo))
        with lock:
            finished.append(index)
            done, elapsed = len(finished), time.time() - start
            print(
                f"    {done}/{len(todo)} runs in {elapsed / 60:.1f} min; "
                f"about {elapsed / done * (len(todo) - done) / 60:.0f} min to go",
                flush=True,
            )
            after_each()

    in_parallel(args.jobs, list(enumerate(todo, 1)), one)


def run_study(args):
    """
    Train (resuming), evaluate and time every run of ``args.tables`` (options
    as tools/ablation.py parses them), keeping each run's result.json under
    ``args.output`` and writing the report after every run.
    """
    os.makedirs(args.output, exist_ok=True)
    runs = plan_runs(args)
    if any(n in LD_VARIANTS for n, _ in runs):
        ensure_teacher(args)
    todo = [(n, s) for n, s in runs if s not in finished_seeds(args, n)]
    print(
        f"{len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to go; runs in "
        f"{args.output}, "
        f"report {os.path.join(args.results, args.name)}.md",
        flush=True,
    )
    run_all(args, todo)
    if not args.skip_timing:
        names = list(OrderedDict.fromkeys(r for t in args.tables for r in TABLES[t][1]))
        print(
            f"timing inference of {len(names)} variants ({args.timing_images} images x "
            f"{args.timing_rounds} rounds)",
            flush=True,
        )
        timing = measure_inference(args, names)
        with open(os.path.join(args.output, "timing.json"), "w") as f:
            json.dump(timing, f, indent=1)
        ld_rows = [n for n in names if n in ("Student",) + LD_VARIANTS]
        if any(n in LD_VARIANTS for n in ld_rows):
            print(f"timing training steps of {', '.join(ld_rows)}", flush=True)
            with open(os.path.join(args.output, "training_steps.json"), "w") as f:
                json.dump(measure_training_steps(args, ld_rows), f, indent=1)
    print(write(args))


# ------------------------------------------------------------------ learning-rate tuning
TUNED_VARIANTS = ("RetinaNet", "FCOS", "ATSS", "GFL")  # the detectors of the main comparison


def lr_args(args, lr):
    """
    The options of the runs at learning rate ``lr``: their own folder ``<output>/lr<lr>``, the
    rate as an override.
    """
    return argparse.Namespace(
        **dict(
            vars(args),
            output=os.path.join(args.output, f"lr{lr:g}"),
            opts=list(args.opts) + [f"optimizer.lr={lr:g}"],
        )
    )


def run_lr_tuning(args):
    """
    ``--lrs``: every variant of ``--variants`` (default the main comparison's
    detectors) at each rate with ``--tune-seed``, then at its best rate with
    ``--seeds`` (:mod:`gfl_studies.lr_tuning`); the report after every run.
    """
    names = args.variants or list(TUNED_VARIANTS)
    setup = dict(
        what=f"shapes: 3000 train / 300 val images, 128 px; {BACKBONE}; {args.iters} iterations, "
        f"batch {args.batch}, the schedule of the ablation; validation AP on shapes_val.",
        lrs=list(args.lrs),
        tune_seed=args.tune_seed,
        seeds=list(args.seeds),
        iters=args.iters,
        batch=args.batch,
        **machine("cpu"),
    )
    counter = iter(range(1, 10**6))

    def run_one(name, lr, seed):
        sub = lr_args(args, lr)
        if seed in finished_seeds(sub, name):
            return next(r for r in load_results(sub, name) if r["seed"] == seed)["metrics"]
        return do_run(
            sub, name, seed, next(counter), len(names) * (len(args.lrs) + len(args.seeds))
        )["metrics"]

    def report(runs):
        write_report(args.results, args.name, dict(setup=setup, runs=runs), render_lr_tuning)

    runs = tune_then_seeds(names, args.lrs, args.tune_seed, args.seeds, run_one, args.jobs, report)
    report(runs)
    print(render_lr_tuning(dict(setup=setup, runs=runs)))
