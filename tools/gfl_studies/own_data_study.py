"""
GFL against detectron2's FCOS on a dataset folder the project was not tuned
on, trained with the documented command (``python -m gfl_d2.training
--config-file configs/OwnData/... dataset.root=...``), over seeds, with GFL's
bins as configured and as the bin check advises. ``tools/own_data_study.py``
is its command line; by default it generates the second dataset ("bars",
:mod:`.bars`) in the layout asked for. The report
(``<name>.json``, ``<name>.md``) is written as in :mod:`gfl_studies.reports`.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from gfl_d2.bins import BIN_FIT_FILE
from gfl_d2.model_zoo import get_config_file

from .lr_tuning import render as render_lr_tuning
from .lr_tuning import tune_then_seeds
from .reports import final_evaluation, machine, write_report

__all__ = [
    "run_own_data_study",
    "run_own_data_lr_tuning",
    "final_metrics",
    "read_bin_fit",
    "summarize",
    "render",
    "render_report",
]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
CONFIGS = {"GFL": "OwnData/gfl_R_18_FPN_scratch.py", "FCOS": "OwnData/fcos_R_18_FPN_scratch.py"}
FCOS_LOW_THRESHOLD = (
    "FCOS, test_score_thresh 0.001"  # FCOS evaluated again, keeping nearly every detection
)


def final_metrics(output_dir: str) -> Dict[str, float]:
    """The last evaluation's bbox metrics in ``output_dir/metrics.json``."""
    return final_evaluation(output_dir, "bbox")


def read_bin_fit(output_dir: str) -> Dict:
    """The bin check of a run, as training wrote it (``gfl_d2.bins.BIN_FIT_FILE``); {} if none."""
    path = os.path.join(output_dir, BIN_FIT_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def copypaste_metrics(log_text: str, task: str = "bbox") -> Dict[str, float]:
    """
    The metrics of ``task`` that detectron2's ``print_csv_format`` logged last
    (its ``copypaste:`` lines: the task, the metric names, their values).
    Only for an ``--eval-only`` run: it writes no ``metrics.json``, and the
    results it returns stay in its process, so its log is the one record.
    """
    found, current, names = None, None, None
    for line in log_text.splitlines():
        if "copypaste: " not in line:
            continue
        text = line.split("copypaste: ", 1)[1].strip()
        if text.startswith("Task: "):
            current, names = text[len("Task: ") :], None
        elif names is None:
            names = text.split(",")
        elif current == task:
            found = dict(zip(names, (float(v) for v in text.split(","))))
    if found is None:
        raise RuntimeError(f"no copypaste: metrics of {task} in the log")
    return found


def _evaluate(config: str, overrides: List[str], out: str, label: str) -> Dict[str, float]:
    """``--eval-only`` of a finished run's weights with other test settings; the metrics."""
    log_path = os.path.join(out, "eval_log.txt")
    if not os.path.isfile(log_path):
        os.makedirs(out, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "gfl_d2.training",
            "--config-file",
            get_config_file(config),
            "--eval-only",
            *overrides,
            f"train.output_dir={out}",
        ]
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{label}: evaluation failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
            )
        with open(log_path, "w") as f:
            f.write(proc.stdout)
    with open(log_path) as f:
        metrics = copypaste_metrics(f.read())
    print(f"{label}: AP {metrics['AP']:.2f}", flush=True)
    return metrics


def _train(config: str, overrides: List[str], out: str, label: str, threads: int = 0) -> str:
    """
    Run the entry point (a finished run is not run again); return its log. ``threads``: torch's,
    0 = its default.
    """
    log_path = os.path.join(out, "train_log.txt")
    if os.path.isfile(os.path.join(out, "model_final.pth")) and os.path.isfile(log_path):
        print(f"{label}: done before, reusing {out}", flush=True)
        with open(log_path) as f:
            return f.read()
    os.makedirs(out, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "gfl_d2.training",
        "--config-file",
        get_config_file(config),
        *overrides,
        f"train.output_dir={out}",
    ]
    start = time.time()
    print(f"{label}: {' '.join(cmd[3:])}", flush=True)
    env = dict(
        os.environ,
        PYTHONWARNINGS="ignore",
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
    )
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    with open(log_path, "w") as f:
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: training failed (exit {proc.returncode}); see {log_path}")
    print(
        f"{label}: {(time.time() - start) / 60:.1f} min, AP {final_metrics(out)['AP']:.2f}",
        flush=True,
    )
    return proc.stdout


def _fcos_low_threshold(config: str, base: List[str], out: str, seed: int) -> Dict[str, float]:
    """
    detectron2's FCOS keeps detections with sqrt(score x centerness) > 0.2: early in training it may
    keep
    none, so it is also evaluated keeping nearly all (COCO AP ranks the top 100 anyway).
    """
    weights = os.path.join(out, "model_final.pth")
    return _evaluate(
        config,
        base + [f"train.init_checkpoint={weights}", "model.test_score_thresh=0.001"],
        os.path.join(out, "eval_thresh_0.001"),
        f"{FCOS_LOW_THRESHOLD} seed {seed}",
    )


def _first_gfl_bins(output_dir: str) -> Tuple[List[str], str, str]:
    """The bins to compare from the first GFL run's bin check: (overrides, why, its summary)."""
    fit = read_bin_fit(output_dir)
    warned, recommended = fit.get("advised_change"), fit.get("recommended_reg_max")
    # the warning's change, else n fitted to 99% of the targets (the check's recommendation)
    if warned:
        advice = [warned]
    else:
        advice = [f"model.head.box2box_transform.reg_max={recommended}"] if recommended else []
    why = "the warning's advice" if warned else "recommended n, no warning"
    return advice, why, fit.get("summary", "")


def run_own_data_study(
    root: str,
    output: str,
    seeds: List[int],
    common: List[str],
    bins_seeds: Optional[int] = None,
    results: Optional[str] = None,
    name: str = "own_data_study",
) -> str:
    """
    For each seed: GFL as configured, FCOS, and (for the first ``bins_seeds``
    seeds, default all) GFL with the bins the check advises, or recommends
    when it does not warn. Runs go to ``output``; the report to
    ``results/<name>.json`` and ``.md`` (``results`` default: ``output``).
    Returns the report (Markdown).
    """
    runs: Dict[str, List[Dict]] = {}
    advice, why, summary = None, "", ""
    base = [f"dataset.root={root}"] + list(common)
    for i, seed in enumerate(seeds):
        for model, config in CONFIGS.items():
            out = os.path.join(output, model, f"seed{seed}")
            _train(config, base + [f"train.seed={seed}"], out, f"{model} seed {seed}")
            if model == "GFL" and advice is None:
                advice, why, summary = _first_gfl_bins(out)
            runs.setdefault(model, []).append(dict(seed=seed, metrics=final_metrics(out)))
            if model == "FCOS":
                runs.setdefault(FCOS_LOW_THRESHOLD, []).append(
                    dict(seed=seed, metrics=_fcos_low_threshold(config, base, out, seed))
                )
        if advice and (bins_seeds is None or i < bins_seeds):
            label = f"GFL, fitted bins ({' '.join(advice)}: {why})"
            out = os.path.join(output, "GFL_fitted_bins", f"seed{seed}")
            _train(
                CONFIGS["GFL"], base + advice + [f"train.seed={seed}"], out, f"{label} seed {seed}"
            )
            runs.setdefault(label, []).append(dict(seed=seed, metrics=final_metrics(out)))
    setup = dict(dataset=root, seeds=list(seeds), settings=" ".join(common), **machine("cpu"))
    data = dict(
        setup=setup,
        bin_check=summary,
        bins_compared=f"{' '.join(advice)} ({why})" if advice else None,
        models=[dict(name=k, runs=v, summary=summarize(v)) for k, v in runs.items()],
    )
    return write_report(results or output, name, data, render)


def run_own_data_lr_tuning(
    root: str,
    output: str,
    lrs: List[float],
    tune_seed: int,
    seeds: List[int],
    common: List[str],
    jobs: int = 1,
    results: Optional[str] = None,
    name: str = "own_data_lr_tuning",
) -> str:
    """
    GFL and FCOS (:data:`CONFIGS`) each at its own learning rate
    (:mod:`gfl_studies.lr_tuning`): every rate of ``lrs`` with ``tune_seed``,
    then the best on the validation split with ``seeds``. Runs go to
    ``output/lr<r>/<model>/seed<k>``; the report to ``results/<name>``. Returns the report
    (Markdown).
    """
    base = [f"dataset.root={root}"] + list(common)
    threads = max(1, 2 // jobs) if jobs > 1 else 0

    def run_one(model, lr, seed):
        out = os.path.join(output, f"lr{lr:g}", model, f"seed{seed}")
        _train(
            CONFIGS[model],
            base + [f"train.seed={seed}", f"optimizer.lr={lr:g}"],
            out,
            f"{model} lr {lr:g} seed {seed}",
            threads,
        )
        return final_metrics(out)

    setup = dict(
        what=f"GFL and detectron2's FCOS with the configs of configs/OwnData on {root}; settings: "
        f"{' '.join(common)}; validation AP.",
        lrs=list(lrs),
        tune_seed=tune_seed,
        seeds=list(seeds),
        dataset=root,
        settings=" ".join(common),
        **machine("cpu"),
    )

    def report(runs):
        return write_report(results or output, name, dict(setup=setup, runs=runs), render_lr_tuning)

    return report(tune_then_seeds(list(CONFIGS), lrs, tune_seed, seeds, run_one, jobs, report))


def render_report(data: Dict) -> str:
    """The Markdown of either report of this module: the study's or a learning-rate tuning's."""
    return render_lr_tuning(data) if "tune_seed" in data["setup"] else render(data)


def summarize(runs: List[Dict]) -> Dict:
    """
    Per metric: mean, std (None for one seed) and the number of seeds with a value; the AP of
    each seed.
    """
    out = {}
    for m in METRICS:
        values = [r["metrics"].get(m, float("nan")) for r in runs]
        values = [v for v in values if v == v and v >= 0]  # COCO's -1 / NaN: no object of that size
        out[m] = dict(
            mean=statistics.mean(values) if values else None,
            std=statistics.stdev(values) if len(values) > 1 else None,
            n=len(values),
        )
    return dict(
        metrics=out,
        ap_per_seed=[r["metrics"].get("AP", float("nan")) for r in runs],
        seeds=len(runs),
    )


def _cell(stat: Dict) -> str:
    if stat["mean"] is None:
        return "–"
    return (
        f"{stat['mean']:.1f}" if stat["std"] is None else f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    )


def render(data: Dict) -> str:
    """The study's Markdown: its settings, the bin check's line, one row per model."""
    setup = data["setup"]
    measured = (
        f"Measured {setup['date']} on {setup['device']}, torch {setup['torch']}. "
        if "date" in setup
        else ""
    )
    lines = [
        f"{measured}Dataset: {setup['dataset']}; seeds {', '.join(map(str, setup['seeds']))}; "
        "settings: "
        f"{setup['settings']}",
        "",
        f"Bin check of the first GFL run: {data['bin_check'] or 'no line found'}",
        f"Bins compared: {data['bins_compared'] or 'none (n already fits)'}",
        "",
        "| model | " + " | ".join(METRICS) + " | seeds | AP per seed |",
        "|---|" + "---:|" * (len(METRICS) + 2),
    ]
    for model in data["models"]:
        s = model["summary"]
        cells = [_cell(s["metrics"][m]) for m in METRICS]
        per_seed = ", ".join(f"{ap:.1f}" for ap in s["ap_per_seed"])
        lines.append(
            f"| {model['name']} | " + " | ".join(cells) + f" | {s['seeds']} | {per_seed} |"
        )
    return "\n".join(lines)
