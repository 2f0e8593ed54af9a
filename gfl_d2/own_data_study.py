"""
GFL against detectron2's FCOS on a dataset folder the project was not tuned
on, trained with the documented command (``python -m gfl_d2.training
--config-file configs/OwnData/... dataset.root=...``), over seeds, with GFL's
bins as configured and as the bin check advises. ``tools/own_data_study.py``
is its command line; by default it generates the second dataset ("bars",
:mod:`gfl_d2.data.bars`) in the layout asked for.
"""
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from .ablation import fmt
from .model_zoo import get_config_file

__all__ = ["run_own_data_study", "final_metrics", "bin_advice"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
CONFIGS = {"GFL": "OwnData/gfl_R_18_FPN_scratch.py", "FCOS": "OwnData/fcos_R_18_FPN_scratch.py"}


def final_metrics(output_dir: str) -> Dict[str, float]:
    """The last evaluation's bbox metrics in ``output_dir/metrics.json``."""
    last = None
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            if '"bbox/AP"' in line:
                last = json.loads(line)
    if last is None:
        raise RuntimeError(f"no evaluation in {output_dir}/metrics.json")
    return {k[len("bbox/"):]: float(v) for k, v in last.items() if k.startswith("bbox/")}


def bin_advice(log_text: str) -> Tuple[Optional[List[str]], Optional[int]]:
    """
    From a training log: the overrides the bin check's warning advised (None:
    no warning), and the n it says would cover 99% of the targets.
    """
    advised, recommended = None, None
    for line in log_text.splitlines():
        if "GFL bins:" in line and "model.reg_max=" in line:
            advised = re.findall(r"model\.(?:reg_max|head\.box_channels)=\d+", line)
        m = re.search(r"GFL bins: .* n = (\d+) would cover 99%", line)
        if m:
            recommended = int(m.group(1))
    return advised, recommended


def copypaste_metrics(log_text: str) -> Dict[str, float]:
    """The bbox metrics of detectron2's last ``copypaste:`` lines in a log."""
    names, values = None, None
    for line in log_text.splitlines():
        if "copypaste: AP," in line:
            names = line.split("copypaste: ", 1)[1].strip().split(",")
        elif names and "copypaste: " in line and values is None:
            values = [float(v) for v in line.split("copypaste: ", 1)[1].strip().split(",")]
    if names is None or values is None:
        raise RuntimeError("no copypaste: metrics in the log")
    return dict(zip(names, values))


def _evaluate(config: str, overrides: List[str], out: str, label: str) -> Dict[str, float]:
    """``--eval-only`` of a finished run's weights with other test settings; the metrics."""
    log_path = os.path.join(out, "eval_log.txt")
    if not os.path.isfile(log_path):
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, "-m", "gfl_d2.training", "--config-file", get_config_file(config), "--eval-only",
               *overrides, f"train.output_dir={out}"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if proc.returncode != 0:
            raise RuntimeError(f"{label}: evaluation failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
        with open(log_path, "w") as f:
            f.write(proc.stdout)
    with open(log_path) as f:
        metrics = copypaste_metrics(f.read())
    print(f"{label}: AP {metrics['AP']:.2f}", flush=True)
    return metrics


def bin_summary(log_text: str) -> str:
    for line in log_text.splitlines():
        if "GFL bins:" in line and "regression targets of" in line:
            return line.split("GFL bins: ", 1)[1].strip()
    return ""


def _train(config: str, overrides: List[str], out: str, label: str) -> str:
    """Run the entry point (resuming a finished run is skipped); return its log."""
    log_path = os.path.join(out, "train_log.txt")
    if os.path.isfile(os.path.join(out, "model_final.pth")) and os.path.isfile(log_path):
        print(f"{label}: done before, reusing {out}", flush=True)
        with open(log_path) as f:
            return f.read()
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "gfl_d2.training", "--config-file", get_config_file(config), *overrides,
           f"train.output_dir={out}"]
    start = time.time()
    print(f"{label}: {' '.join(cmd[3:])}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    with open(log_path, "w") as f:
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{label}: training failed (exit {proc.returncode}); see {log_path}")
    print(f"{label}: {(time.time() - start) / 60:.1f} min, AP {final_metrics(out)['AP']:.2f}", flush=True)
    return proc.stdout


def run_own_data_study(root: str, output: str, seeds: List[int], common: List[str],
                       bins_seeds: Optional[int] = None) -> str:
    """
    For each seed: GFL as configured, FCOS, and (for the first ``bins_seeds``
    seeds, default all) GFL with the bins the check advises, or recommends
    when it does not warn. Returns the report (markdown), also written to
    ``output/own_data_study.md``.
    """
    results: Dict[str, List[Dict[str, float]]] = {}
    advice, summary, advice_kind = None, "", ""
    base = [f"dataset.root={root}"] + list(common)
    for seed in seeds:
        for name, config in CONFIGS.items():
            out = os.path.join(output, name, f"seed{seed}")
            log = _train(config, base + [f"train.seed={seed}"], out, f"{name} seed {seed}")
            if name == "GFL" and advice is None:
                warned, recommended = bin_advice(log)
                summary = bin_summary(log)
                # the warning's change, else n fitted to 99% of the targets (the check's recommendation)
                advice = warned or ([f"model.reg_max={recommended}", f"model.head.box_channels={4 * (recommended + 1)}"]
                                    if recommended else [])
                advice_kind = "the warning's advice" if warned else "recommended n, no warning"
            results.setdefault(name, []).append(final_metrics(out))
            if name == "FCOS":
                # detectron2's FCOS keeps detections with sqrt(score x centerness) > 0.2: early in training it
                # may keep none, so it is also evaluated keeping nearly all (COCO AP ranks the top 100 anyway)
                weights = os.path.join(out, "model_final.pth")
                extra_name = "FCOS, test_score_thresh 0.001"
                results.setdefault(extra_name, []).append(_evaluate(
                    config, base + [f"train.init_checkpoint={weights}", "model.test_score_thresh=0.001"],
                    os.path.join(out, "eval_thresh_0.001"), f"{extra_name} seed {seed}"))
        if advice and (bins_seeds is None or seeds.index(seed) < bins_seeds):
            name = f"GFL, fitted bins ({' '.join(advice)}: {advice_kind})"
            out = os.path.join(output, "GFL_fitted_bins", f"seed{seed}")
            _train(CONFIGS["GFL"], base + advice + [f"train.seed={seed}"], out, f"{name} seed {seed}")
            results.setdefault(name, []).append(final_metrics(out))
    lines = [
        f"Dataset: {root}; seeds {', '.join(map(str, seeds))}; settings: {' '.join(common)}", "",
        f"Bin check of the first GFL run: {summary or 'no line found'}",
        f"Bins compared: {' '.join(advice) + ' (' + advice_kind + ')' if advice else 'none (n already fits)'}", "",
        "| model | " + " | ".join(METRICS) + " | seeds | AP per seed |", "|---|" + "---:|" * (len(METRICS) + 2),
    ]
    for name, rows in results.items():
        cells = [fmt([r.get(m, float("nan")) for r in rows]) for m in METRICS]
        per_seed = ", ".join(f"{r['AP']:.1f}" for r in rows)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(rows)} | {per_seed} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "own_data_study.md"), "w") as f:
        f.write(text)
    return text
