"""
The quick start as a new user meets it (``tools/quickstart.py`` is the
command line): the repository's committed state cloned into a fresh folder,
``python tools/train_net.py`` run there unchanged (no ``$DETECTRON2_DATASETS``,
so the shapes dataset is generated inside the clone, as on a first run), its
wall time measured from the start of the process to its exit, split into
setup (imports, data generation and checks, up to "Starting training"),
training and evaluation by the moments the log lines appear, the
``COCOEvaluator`` result read from the run's ``metrics.json`` and the
generated seed from detectron2's log.

The report (``<name>.json``, ``<name>.md``) is written as in
:mod:`gfl_studies.reports`, with the machine's load average before each run,
since the time depends on a quiet machine.
"""

import glob
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import torch

from .reports import final_evaluation, machine, mean_std, write_report

__all__ = [
    "TARGET_AP",
    "TARGET_SECONDS",
    "parse_log",
    "bbox_result",
    "run_once",
    "summarize",
    "render",
    "write",
    "repository_state",
]

TARGET_AP = 42.0
TARGET_SECONDS = 600.0

_SEED = re.compile(r"Using a generated random seed (\d+)")
# detectron2's CommonMetricPrinter: "time" is the mean iteration time so far, "data_time" the last
# 20's
_ITER_TIME = re.compile(r"(?<!\S)time: ([0-9.]+)")
_DATA_TIME = re.compile(r"(?<!\S)data_time: ([0-9.]+)")
_START = "Starting training from iteration"
_END = "Total training time:"


def parse_log(lines: Sequence[str]) -> Dict:
    """
    What only the log of a ``train_net.py`` run holds: the seed
    (detectron2's ``seed_all_rng`` logs it, nothing stores it) and the time
    per iteration (``CommonMetricPrinter`` prints the mean since the start;
    ``metrics.json`` keeps only medians over its window):
    ``{"seed": int or None, "iteration_seconds": the last printed mean or
    None, "data_seconds": the mean of the printed loading times or None}``.
    """
    seed, iteration, data = None, None, []
    for line in lines:
        m = _SEED.search(line)
        if m:
            seed = int(m.group(1))
        if " iter: " in line:
            m = _ITER_TIME.search(line)
            if m:
                iteration = float(m.group(1))
            m = _DATA_TIME.search(line)
            if m:
                data.append(float(m.group(1)))
    return dict(
        seed=seed,
        iteration_seconds=iteration,
        data_seconds=statistics.mean(data) if data else None,
    )


def bbox_result(clone: str) -> Optional[Dict[str, float]]:
    """
    The bbox metrics of the final evaluation in the run's ``metrics.json``
    (the one in the fresh clone, wherever the config puts its output); None
    when the run wrote none or evaluated nothing.
    """
    found = sorted(glob.glob(os.path.join(clone, "**", "metrics.json"), recursive=True))
    if len(found) > 1:
        raise RuntimeError(f"more than one metrics.json in the fresh clone {clone}: {found}")
    try:
        return final_evaluation(os.path.dirname(found[0]), "bbox") if found else None
    except RuntimeError:
        return None  # no evaluation was logged


def busy_cpu_seconds() -> float:
    """CPU seconds this machine has spent busy since boot, all processes (Linux ``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def repository_state(repo: str) -> Dict:
    """
    The commit of ``repo`` and whether its tracked files differ from it (a clone measures the
    commit only).
    """
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    return dict(commit=commit, dirty=dirty)


def run_once(
    repo: str,
    workdir: str,
    args: Sequence[str] = (),
    threads: int = 0,
    timeout: float = 3600.0,
    keep: bool = False,
    log=print,
) -> Dict:
    """
    Clone ``repo`` into ``workdir``/clone and run ``python tools/train_net.py
    *args`` there with the clone first on ``PYTHONPATH``; the run's record
    (wall seconds, phases, seed, bbox result, exit code, load average before).
    ``threads`` > 0 sets ``OMP_NUM_THREADS`` (studies running side by side;
    the quick start itself leaves it unset). The clone is removed unless ``keep``.
    """
    clone = os.path.join(workdir, "clone")
    if os.path.exists(clone):
        raise FileExistsError(f"{clone} exists: the quick start is measured in a fresh clone")
    os.makedirs(workdir, exist_ok=True)
    subprocess.run(["git", "clone", "-q", repo, clone], check=True)
    env = {
        k: v for k, v in os.environ.items() if k not in ("DETECTRON2_DATASETS", "OMP_NUM_THREADS")
    }
    env["PYTHONPATH"] = clone + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "tools/train_net.py", *args]
    load = os.getloadavg()[0]
    busy0, children0 = busy_cpu_seconds(), _children_cpu()
    log_path = os.path.join(workdir, "train_net.log")
    marks: Dict[str, float] = {}
    lines: List[str] = []
    start = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            command,
            cwd=clone,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        watchdog = threading.Timer(
            timeout, proc.kill
        )  # a run that hangs without printing is killed too
        watchdog.start()
        try:
            for line in proc.stdout:
                now = time.perf_counter() - start
                out.write(line)
                lines.append(line)
                if _START in line:
                    marks.setdefault("training_start", now)
                elif _END in line:
                    marks.setdefault("training_end", now)
            returncode = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - start
    # the run's own CPU time (its loader workers included) against the whole machine's: what else
    # ran meanwhile
    own_cpu = _children_cpu() - children0
    other_cpu = max(0.0, busy_cpu_seconds() - busy0 - own_cpu)
    parsed = dict(parse_log(lines), bbox=bbox_result(clone))
    phases = None
    if "training_start" in marks and "training_end" in marks:
        phases = dict(
            setup=marks["training_start"],
            training=marks["training_end"] - marks["training_start"],
            evaluation=seconds - marks["training_end"],
        )
    if not keep:
        shutil.rmtree(clone, ignore_errors=True)
    record = dict(
        command="python " + " ".join(["tools/train_net.py", *args]),
        returncode=returncode,
        seconds=seconds,
        phases=phases,
        load_before=load,
        cpu_seconds=own_cpu,
        other_cpu_seconds=other_cpu,
        threads=threads or None,
        **parsed,
    )
    if returncode != 0:
        record["log_tail"] = "".join(lines[-20:])
    log(
        f"  exit {returncode}, {seconds:.0f} s, seed {parsed['seed']}, "
        f"AP {parsed['bbox']['AP'] if parsed['bbox'] else None} (log: {log_path})"
    )
    return record


def summarize(runs: Sequence[Dict]) -> Dict:
    """The runs that finished, their time, and whether every run met the targets."""
    done = [r for r in runs if r["returncode"] == 0 and r.get("bbox")]
    aps = [r["bbox"]["AP"] for r in done]
    secs = [r["seconds"] for r in done]
    every = len(done) == len(runs) and bool(done)
    return dict(
        finished=len(done),
        runs=len(runs),
        seconds_mean=statistics.mean(secs) if secs else None,
        seconds_max=max(secs) if secs else None,
        ap_target_met=every and min(aps) >= TARGET_AP,
        time_target_met=every and max(secs) <= TARGET_SECONDS,
    )


def _clock(seconds: Optional[float]) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "–"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}:{sec:02d}"


def _seconds(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _ap(run: Dict, key: str) -> str:
    return f"{run['bbox'][key]:.1f}" if run.get("bbox") and key in run["bbox"] else "–"


def render(data: Dict) -> str:
    m, s = data["machine"], summarize(data["runs"])
    head = (
        f"`{data['command']}` from a fresh clone of commit {data['commit'][:7]}"
        + (" (the working tree had uncommitted changes, not measured)" if data.get("dirty") else "")
        + f"; {m['device']}, torch {m['torch']}, {m['date']}. Time: the process's wall time, "
        "split by the moments detectron2 logs the start and the end of training "
        "(setup: imports, data generation and checks). Other CPU: the cores' busy time during the "
        "run that was "
        "not the run's own (its loader workers included), per second of the run; load before: the "
        "1-minute load "
        "average at the start (it still holds the previous run). s/iter: detectron2's mean "
        "iteration time at the "
        "end of training; loading: the part of it spent waiting for data (mean of the logged "
        "data_time)."
    )
    lines = [
        head,
        "",
        "| run | seed | time | setup | training | evaluation | s/iter | loading | AP | AP50 | AP75 "
        "| other CPU | load before |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(data["runs"], 1):
        ph = r.get("phases") or {}
        lines.append(
            f"| {i} | {r.get('seed') if r.get('seed') is not None else '–'} | "
            f"{_clock(r['seconds'])} | "
            f"{_clock(ph.get('setup'))} | {_clock(ph.get('training'))} | "
            f"{_clock(ph.get('evaluation'))} | "
            f"{_seconds(r.get('iteration_seconds'))} | {_seconds(r.get('data_seconds'))} | "
            f"{_ap(r, 'AP')} | {_ap(r, 'AP50')} | {_ap(r, 'AP75')} | "
            f"{r['other_cpu_seconds'] / max(r['seconds'], 1e-9):.2f} | {r['load_before']:.2f} |"
        )
    aps = [r["bbox"]["AP"] for r in data["runs"] if r.get("bbox")]
    lines += [
        "",
        f"AP {mean_std(aps)} over {s['finished']} of {s['runs']} runs; time "
        f"{_clock(s['seconds_mean'])} "
        f"on average, {_clock(s['seconds_max'])} at most.",
        f"Targets: AP ≥ {TARGET_AP:.0f} in every run: "
        f"{'met' if s['ap_target_met'] else 'not met'}; "
        f"at most {_clock(TARGET_SECONDS)} per run: "
        f"{'met' if s['time_target_met'] else 'not met'}.",
    ]
    failed = [i for i, r in enumerate(data["runs"], 1) if r["returncode"] != 0]
    if failed:
        lines.append(
            f"Runs that failed: {', '.join(map(str, failed))} (their log tails are in the JSON)."
        )
    return "\n".join(lines) + "\n"


def write(results: str, name: str, runs: Sequence[Dict], command: str, state: Dict) -> str:
    data = dict(
        machine=machine("cuda" if torch.cuda.is_available() else "cpu"),
        command=command,
        runs=list(runs),
        **state,
    )
    return write_report(results, name, data, render)
