"""
The studies' reports: each study writes its measurements as ``<name>.json``
and the tables the docs quote as ``<name>.md``, rendered from that JSON, into
one folder (default ``projects/GFL/results/``), so that a number has one
source. ``--report`` renders the Markdown again from an existing JSON
without running anything.
"""

import argparse
import json
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict, Iterable, List, Sequence

import torch

__all__ = [
    "DEFAULT_RESULTS",
    "add_report_arguments",
    "write_report",
    "render_again",
    "mean_std",
    "machine",
    "read_metrics_series",
    "final_evaluation",
]

# the repository's projects/GFL/results (this package lives in <repository>/tools/gfl_studies)
_REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RESULTS = os.path.join(_REPOSITORY, "projects", "GFL", "results")


def add_report_arguments(
    parser: argparse.ArgumentParser, name: str, results: str = DEFAULT_RESULTS
) -> None:
    """
    ``--results DIR`` (default ``results``), ``--name NAME`` (the report's file name, default
    ``name``) and ``--report``.
    """
    group = parser.add_argument_group("report")
    group.add_argument(
        "--results",
        default=results,
        metavar="DIR",
        help=(
            "folder of the report files <name>.json and <name>.md "
            f"(default: {results or 'see above'})"
        ),
    )
    group.add_argument(
        "--name",
        default=name,
        help="file name of the report, without extension (default: %(default)s)",
    )
    group.add_argument(
        "--report",
        action="store_true",
        help="only render <name>.md again from an existing <name>.json; runs nothing",
    )


def _paths(results: str, name: str):
    return os.path.join(results, f"{name}.json"), os.path.join(results, f"{name}.md")


def write_report(results: str, name: str, data: Dict, render: Callable[[Dict], str]) -> str:
    """
    Write ``data`` as ``<results>/<name>.json`` (atomically) and ``render(data)`` as
    ``<name>.md``; the Markdown.
    """
    json_path, md_path = _paths(results, name)
    os.makedirs(results, exist_ok=True)
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, json_path)
    text = render(data)
    with open(md_path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    return text


def render_again(results: str, name: str, render: Callable[[Dict], str]) -> str:
    """
    Render ``<results>/<name>.md`` from ``<results>/<name>.json``; SystemExit if there is no
    such JSON.
    """
    json_path, md_path = _paths(results, name)
    if not os.path.isfile(json_path):
        raise SystemExit(f"error: --report: no results to render: {json_path} not found")
    with open(json_path) as f:
        data = json.load(f)
    text = render(data)
    with open(md_path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    return text


def mean_std(values: Iterable[float]) -> str:
    """
    ``"27.8 ± 0.7"`` over seeds (one value: ``"27.8"``); COCO's -1 / NaN (no object of a size)
    are left out.
    """
    values = [v for v in values if v is not None and not math.isnan(v) and v >= 0]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def read_metrics_series(run_dir: str, keys: Sequence[str]) -> List[Dict]:
    """
    The training scalars ``keys`` a run logged (detectron2's ``metrics.json``):
    one dict per logged iteration holding any of them, with ``iteration``
    counted from 1; empty if the run logged none of them.
    """
    rows = []
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            record = json.loads(line)
            if "iteration" in record and any(k in record for k in keys):
                rows.append(
                    dict(
                        iteration=record["iteration"] + 1,
                        **{k: record[k] for k in keys if k in record},
                    )
                )
    return rows


def final_evaluation(run_dir: str, task: str = "bbox") -> Dict[str, float]:
    """
    The metrics of ``task`` (``{"AP": ..., "AP50": ..., ...}``) of the last
    evaluation detectron2 wrote to ``run_dir/metrics.json`` (its JSONWriter
    writes the evaluator's results as ``"<task>/<metric>"`` scalars).
    """
    prefix, last = f"{task}/", None
    with open(os.path.join(run_dir, "metrics.json")) as f:
        for line in f:
            record = json.loads(line)
            if f"{prefix}AP" in record:
                last = record
    if last is None:
        raise RuntimeError(f"no {task} evaluation in {run_dir}/metrics.json")
    return {k[len(prefix) :]: float(v) for k, v in last.items() if k.startswith(prefix)}


def machine(device: str = "cpu") -> Dict:
    """Where a measurement ran: date, device, cores, torch."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        what = torch.cuda.get_device_name(0) + (
            f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
        )
    else:
        what = f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    return dict(date=time.strftime("%Y-%m-%d"), device=what, torch=torch.__version__)
