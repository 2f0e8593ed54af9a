"""
NanoDet-Plus against the quick start's ResNet-18 GFL on the embedded shapes
dataset, from scratch on this machine (``tools/edge_training.py`` is the
command line): for each seed, each config runs as the quick start does
(:func:`gfl_studies.quickstart.run_once`: a fresh clone, ``python
tools/train_net.py`` with the seed set), the two alternating so that drift in
the machine's speed touches both; the report gives each run's AP, training
time and iteration time, and per config the mean and spread.
"""

import json
import os
import statistics
from typing import Dict, List, Sequence

import torch

from .quickstart import repository_state, run_once
from .reports import machine, mean_std, write_report

__all__ = ["MODELS", "run_seed", "earlier_runs", "render", "write"]

# (name, the arguments of tools/train_net.py): the quick start is train_net.py without a config
MODELS = {
    "GFL R-18 (quick start)": [],
    "NanoDet-Plus-m": ["--config-file", "configs/Synthetic/nanodet_plus_m_shapes.py"],
}


def run_seed(repo: str, workdir: str, seed: int, models: Sequence[str], keep: bool) -> List[Dict]:
    """One run of each of ``models`` (names of :data:`MODELS`) with ``train.seed=seed``."""
    records = []
    for name in models:
        args = [*MODELS[name], f"train.seed={seed}"]
        folder = f"{workdir}/seed{seed}_{name.split()[0].lower()}"
        print(f"seed {seed}: {name}: python tools/train_net.py {' '.join(args)}")
        commit = repository_state(repo)["commit"]  # what the clone gets
        record = run_once(repo, folder, args, keep=keep)
        records.append(dict(record, model=name, seed=seed, commit=commit))
    return records


def _clock(seconds) -> str:
    if seconds is None:
        return "–"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}:{sec:02d}"


def _row(r: Dict) -> str:
    bbox, phases = r.get("bbox") or {}, r.get("phases") or {}
    ap = " | ".join(f"{bbox[k]:.1f}" if k in bbox else "–" for k in ("AP", "AP50", "AP75"))
    it = r.get("iteration_seconds")
    return (
        f"| {r['model']} | {r['seed']} | {_clock(phases.get('training'))} | "
        f"{_clock(r['seconds'])} | {'–' if it is None else f'{it:.3f}'} | {ap} | "
        f"{r['other_cpu_seconds'] / max(r['seconds'], 1e-9):.2f} | {r['load_before']:.2f} |"
    )


def _summary(runs: Sequence[Dict], name: str) -> str:
    done = [r for r in runs if r["model"] == name and r["returncode"] == 0 and r.get("bbox")]
    if not done:
        return f"- {name}: no finished run."
    aps = [r["bbox"]["AP"] for r in done]
    train = [r["phases"]["training"] for r in done if r.get("phases")]
    return (
        f"- {name}: AP {mean_std(aps)} over {len(done)} runs; training "
        f"{_clock(statistics.mean(train)) if train else '–'} on average."
    )


def _models(data: Dict) -> List[str]:
    """The models of the report's runs, in :data:`MODELS`' order."""
    ran = {r["model"] for r in data["runs"]} | set(data["models"])
    return [m for m in MODELS if m in ran] + sorted(ran - set(MODELS))


def _commits(data: Dict) -> str:
    """The commit the runs cloned (a run added later may have cloned another: each named)."""
    runs: Dict[str, List[str]] = {}
    for r in data["runs"]:
        runs.setdefault(r.get("commit", data["commit"])[:7], []).append(
            f"{r['model'].split(' (')[0]} seed {r['seed']}"
        )
    if len(runs) == 1:
        return next(iter(runs))
    return ", ".join(f"{c} ({', '.join(names)})" for c, names in sorted(runs.items()))


def render(data: Dict) -> str:
    m = data["machine"]
    lines = [
        f"Each config trained from scratch on the shapes dataset by `python tools/train_net.py` "
        f"in a fresh clone of commit {_commits(data)}, the configs in turn seed by seed (a run "
        f"added later names its own commit); {m['device']}, "
        f"torch {m['torch']}, {m['date']}. Training: detectron2's logged start to end; "
        "time: the whole process (data generation, training, evaluation); "
        "other CPU: the cores' busy time not the run's own, per second of the run.",
        "",
        "| model | seed | training | time | s/iter | AP | AP50 | AP75 | other CPU | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[_row(r) for r in data["runs"]],
        "",
        *[_summary(data["runs"], name) for name in _models(data)],
    ]
    failed = [f"{r['model']} seed {r['seed']}" for r in data["runs"] if r["returncode"] != 0]
    if failed:
        lines.append(f"Runs that failed: {', '.join(failed)} (log tails in the JSON).")
    return "\n".join(lines) + "\n"


def earlier_runs(results: str, name: str, replaced: Sequence[Dict]) -> List[Dict]:
    """
    The runs of the report ``<results>/<name>.json`` (each with its commit) that
    are not of a (model, seed) in ``replaced``; none if there is no report.
    """
    path = os.path.join(results, f"{name}.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        data = json.load(f)
    again = {(r["model"], r["seed"]) for r in replaced}
    return [
        dict(r, commit=r.get("commit", data["commit"]))
        for r in data["runs"]
        if (r["model"], r["seed"]) not in again
    ]


def write(results: str, name: str, runs: Sequence[Dict], models: Sequence[str], repo: str) -> str:
    state = repository_state(repo)
    data = dict(
        machine=machine("cuda" if torch.cuda.is_available() else "cpu"),
        commit=state["commit"],
        dirty=state["dirty"],
        models=list(models),
        runs=list(runs),
    )
    return write_report(results, name, data, render)
