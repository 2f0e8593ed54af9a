"""
The speed of COCO evaluation's fast path (:func:`gfl_d2.evaluation.fast_cocoeval`:
detectron2's compiled ``COCOeval_opt`` where it is built, otherwise
faster-coco-eval's ``COCOeval``) against pycocotools' ``COCOeval`` on a
synthetic set of COCO val2017's size: 5,000 images, about 36,800 ground-truth
boxes over 80 categories (COCO's share of small, medium, large and crowd
objects, a few frequent categories), about 100 detections per image (jittered
copies of the ground truth and boxes without it). Each implementation runs
``evaluate``, ``accumulate`` and ``summarize`` on its own copy of the data,
timed by stage; their 12 summary numbers and precision arrays are compared.
The command line is ``tools/coco_eval_speed.py``.
"""

import contextlib
import io
import json
import statistics
import time
from typing import Dict, List, Tuple

import numpy as np

from .reports import machine

__all__ = ["synthetic_coco", "time_cocoeval", "measure", "render"]

STAGES = ("evaluate", "accumulate", "summarize")
STATS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def _boxes(rng, n, width, height):
    """``n`` XYWH boxes inside the image: COCO's size mix (41% small, 34% medium, 25% large)."""
    kind = rng.choice(3, size=n, p=[0.41, 0.34, 0.25])
    low, high = np.array([2.0, 32.0, 96.0])[kind], np.array([32.0, 96.0, 400.0])[kind]
    side = rng.uniform(low, high)
    aspect = rng.uniform(0.4, 2.5, n)
    w = np.minimum(side * np.sqrt(aspect), width - 1)
    h = np.minimum(side / np.sqrt(aspect), height - 1)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.stack([x, y, w, h], 1)


def _image_detections(rng, gt, gt_cats, per_image, num_classes, width, height):
    """An image's detections (XYWH, category, score): 1-3 per ground truth, then background."""
    copies = rng.integers(1, 4, len(gt))
    src = np.repeat(np.arange(len(gt)), copies)
    jitter = rng.normal(0, rng.choice([0.04, 0.15, 0.4], len(src))[:, None], (len(src), 4))
    hits = gt[src] + jitter * gt[src][:, [2, 3, 2, 3]]
    hits[:, 2:] = np.maximum(hits[:, 2:], 1.0)
    hit_cats = np.where(
        rng.random(len(src)) < 0.85, gt_cats[src], rng.integers(1, num_classes + 1, len(src))
    )
    n_bg = max(per_image - len(src), 0)
    pool = gt_cats if len(gt_cats) and rng.random() < 0.6 else np.arange(1, num_classes + 1)
    boxes = np.concatenate([hits, _boxes(rng, n_bg, width, height)])[:per_image]
    cats = np.concatenate([hit_cats, rng.choice(pool, n_bg)])[:per_image]
    scores = np.concatenate([rng.beta(4, 2, len(src)), rng.beta(1, 6, n_bg)])[:per_image]
    return boxes, cats, scores


def synthetic_coco(
    num_images=5000, num_classes=80, gt_per_image=7.36, dets_per_image=100, seed=0
) -> Tuple[Dict, List[Dict]]:
    """A COCO ground-truth dict and detections (COCO results) of val2017's size."""
    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, num_classes + 1) ** 0.8  # a few frequent categories
    frequency /= frequency.sum()
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(480, 641)), int(rng.integers(360, 481))
        images.append(dict(id=image_id, width=width, height=height, file_name=f"{image_id}.jpg"))
        gt = _boxes(rng, int(rng.poisson(gt_per_image)), width, height)
        cats = rng.choice(num_classes, len(gt), p=frequency) + 1
        for box, c in zip(gt, cats):
            crowd = int(rng.random() < 0.01)
            area = float(box[2] * box[3] * rng.uniform(0.5, 0.9))  # a mask's area, as COCO's
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=int(c),
                    bbox=[float(v) for v in box],
                    area=area,
                    iscrowd=crowd,
                )
            )
        det = _image_detections(rng, gt, cats, dets_per_image, num_classes, width, height)
        for box, c, s in zip(*det):
            results.append(
                dict(
                    image_id=image_id,
                    category_id=int(c),
                    bbox=[float(v) for v in box],
                    score=float(s),
                )
            )
    categories = [dict(id=c, name=f"class_{c}") for c in range(1, num_classes + 1)]
    return dict(images=images, annotations=annotations, categories=categories), results


def time_cocoeval(cocoeval_class, dataset_json: str, results: List[Dict]) -> Dict:
    """One evaluation on fresh copies of the data: seconds per stage, stats, precision."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = json.loads(dataset_json)
    seconds = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        start = time.perf_counter()
        dt = gt.loadRes([dict(r) for r in results])
        seconds["loadRes"] = time.perf_counter() - start
        coco_eval = cocoeval_class(gt, dt, "bbox")
        for stage in STAGES:
            start = time.perf_counter()
            getattr(coco_eval, stage)()
            seconds[stage] = time.perf_counter() - start
    seconds["total"] = sum(seconds[s] for s in STAGES)
    return dict(seconds=seconds, stats=coco_eval.stats, precision=coco_eval.eval["precision"])


def _describe(dataset: Dict, results: List[Dict], seed: int) -> Dict:
    areas = np.array([a["area"] for a in dataset["annotations"]])
    return dict(
        images=len(dataset["images"]),
        categories=len(dataset["categories"]),
        ground_truth=len(areas),
        crowd=sum(a["iscrowd"] for a in dataset["annotations"]),
        small=int((areas < 32**2).sum()),
        medium=int(((areas >= 32**2) & (areas < 96**2)).sum()),
        large=int((areas >= 96**2).sum()),
        detections=len(results),
        seed=seed,
    )


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _versions(fast) -> Dict:
    return dict(
        fast_path=f"{fast.__module__}.{fast.__qualname__}",
        pycocotools=_version("pycocotools"),
        faster_coco_eval=_version("faster-coco-eval"),
        numpy=np.__version__,
    )


def measure(num_images=5000, repeats=1, seed=0) -> Dict:
    """The report's data: the set, each implementation's runs, their agreement, the ratio."""
    from pycocotools.cocoeval import COCOeval

    from gfl_d2.evaluation import fast_cocoeval

    fast = fast_cocoeval()
    dataset, results = synthetic_coco(num_images=num_images, seed=seed)
    dataset_json = json.dumps(dataset)
    runs = {"fast": [], "pycocotools": []}
    outputs = {}
    for _ in range(repeats):  # alternating
        for name, cls in (("fast", fast), ("pycocotools", COCOeval)):
            out = time_cocoeval(cls, dataset_json, results)
            runs[name].append(out["seconds"])
            outputs[name] = out
    a, b = outputs["fast"], outputs["pycocotools"]
    median = {n: statistics.median(r["total"] for r in rs) for n, rs in runs.items()}
    differ = a["precision"] != b["precision"]
    return dict(
        machine=machine("cpu"),
        versions=_versions(fast),
        dataset=_describe(dataset, results, seed),
        runs=runs,
        stats={"fast": a["stats"].tolist(), "pycocotools": b["stats"].tolist()},
        stats_max_abs_difference=float(np.abs(a["stats"] - b["stats"]).max()),
        precision_values=int(a["precision"].size),
        precision_values_different=int(differ.sum()),
        # pycocotools' tp / (tp + fp + eps), eps = 2**-52, is 1 - 2**-52 where tp + fp == 1
        precision_values_different_not_eps=int(
            (differ & ~((b["precision"] == 1 - 2**-52) & (a["precision"] == 1.0))).sum()
        ),
        precision_max_abs_difference=float(np.abs(a["precision"] - b["precision"]).max()),
        speedup=median["pycocotools"] / median["fast"],
    )


def agree(data: Dict, tolerance: float = 1e-12) -> bool:
    """The two implementations' 12 summary numbers agree (to float rounding)."""
    return data["stats_max_abs_difference"] <= tolerance


def _row(name: str, runs: List[Dict]) -> str:
    cells = [statistics.median(r[s] for r in runs) for s in STAGES + ("total",)]
    return f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |"


def render(data: Dict) -> str:
    m, d, v = data["machine"], data["dataset"], data["versions"]
    fast_name = f"fast path (`{v['fast_path']}`, faster-coco-eval {v['faster_coco_eval']})"
    repeats = len(data["runs"]["fast"])
    lines = [
        f"COCO evaluation (bbox) of a synthetic COCO-style set: {d['images']} images, "
        f"{d['ground_truth']} ground-truth boxes over {d['categories']} categories "
        f"({d['small']} small, {d['medium']} medium, {d['large']} large; {d['crowd']} crowd), "
        f"{d['detections']} detections (seed {d['seed']}). {m['device']}, numpy {v['numpy']}, "
        f"pycocotools {v['pycocotools']}, {m['date']}. Seconds, median of {repeats} "
        "run(s) each, alternating; total = evaluate + accumulate + summarize (without "
        "`loadRes`, the same code for both)."
        + (
            " faster-coco-eval accumulates within `evaluate` (its default, `separate_eval=False`)."
            if "faster" in v["fast_path"]
            else ""
        ),
        "",
        "| COCOeval | evaluate | accumulate | summarize | total |",
        "|---|---:|---:|---:|---:|",
        _row(fast_name, data["runs"]["fast"]),
        _row("pycocotools", data["runs"]["pycocotools"]),
        "",
        f"The fast path takes 1/{data['speedup']:.1f} of pycocotools' time "
        f"(pycocotools / fast path = {data['speedup']:.1f}).",
        "",
        f"Agreement: the 12 summary numbers differ by at most "
        f"{data['stats_max_abs_difference']:.3g} "
        f"({'agree' if agree(data) else 'DISAGREE'}); "
        f"{data['precision_values_different']} of {data['precision_values']} precision values "
        f"differ, by at most {data['precision_max_abs_difference']:.3g}; "
        f"{data['precision_values_different_not_eps']} of them other than where pycocotools "
        "gives 1 − 2⁻⁵² and the fast path 1 (pycocotools' precision is tp / (tp + fp + eps), "
        "eps = 2⁻⁵², which changes the quotient only when tp + fp = 1).",
        "",
        "| | " + " | ".join(STATS) + " |",
        "|---|" + "---:|" * len(STATS),
    ]
    for name in ("fast", "pycocotools"):
        values = " | ".join(f"{100 * s:.2f}" for s in data["stats"][name])
        lines.append(f"| {name} | {values} |")
    return "\n".join(lines) + "\n"
