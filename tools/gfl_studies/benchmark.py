"""
The one benchmark driver of ``tools/benchmark.py`` and ``tools/gpu_check.sh``:
GFL (V1, V2) against detectron2's own FCOS and RetinaNet, R-50-FPN with one
backbone, COCO-like inputs, in one process on one device. Every measured
line (:class:`Line`) runs all models round-robin, so that drifts of the
machine's speed hit them alike; a model that fails a line (detectron2's
FCOS under fp16 autocast, say) is recorded with its error beside the others.

A result, as written to ``<name>.json``::

    device, torch, mode, repeat, warmup, seconds,
    lines:   {label: {kind, size, batch, precision, memory}}   what each line is
    results: {model: {label: {median, min, max, runs} or {error}}}
    ratios:  {label: {"a/b": median ratio}}

Times are seconds per image for inference, per iteration for training, per
call for label assignment; memory lines are MiB.

    # (internal) one model's peak memory
    python -m gfl_studies.benchmark --memory gfl --device cpu --mode quick
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from gfl_d2.bins import anchors_for_image_size
from gfl_d2.model_zoo import get_config_file

__all__ = [
    "MODELS",
    "RATIOS",
    "PLANS",
    "Line",
    "build_model",
    "coco_like_boxes",
    "batch_inputs",
    "interleaved",
    "inference_fn",
    "training_fn",
    "assignment_fn",
    "peak_rss_mib",
    "measure",
    "run_benchmark",
    "render",
]

MODELS = ("gfl", "gflv2", "fcos", "retinanet")
# (numerator, denominator) of the ratios
RATIOS = (("gfl", "fcos"), ("gfl", "retinanet"), ("gflv2", "gfl"))
_AMP = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Line:
    """
    One measurement: ``kind`` "infer", "train" or "assign" (``batch`` images x ``boxes`` boxes).
    """

    kind: str
    size: Tuple[int, int]
    batch: int
    precision: Optional[str] = None  # None: fp32; "fp16" / "bf16": autocast
    boxes: int = 0

    @property
    def name(self) -> str:
        h, w = self.size
        if self.kind == "assign":
            return f"assign {self.batch}x{self.boxes} boxes {h}x{w}"
        return f"{self.kind} {h}x{w} b{self.batch}" + (
            f" {self.precision} AMP" if self.precision else ""
        )

    @property
    def label(self) -> str:
        return f"{self.name} ({dict(infer='s/img', train='s/iter', assign='s')[self.kind]})"


def _lines(infer, train, precisions=(None,)):
    return [
        Line(kind, s, b, p)
        for p in precisions
        for kind, sizes in (("infer", infer), ("train", train))
        for s, b in sizes
    ]


# the modes: what is measured, how often; ``memory``: "process" (a fresh process per model at the
# largest
# training line: CPU peak RSS, GPU max allocated) or "line" (GPU memory of one run of every line)
PLANS = {
    "smoke": dict(
        lines=_lines([((96, 128), 1), ((64, 96), 2)], [((64, 96), 2)])
        + [Line("assign", (256, 384), 2, boxes=20)],
        repeat=1,
        warmup=0,
        memory="process",
    ),
    "quick": dict(
        lines=_lines([((800, 1333), 1), ((320, 512), 1), ((320, 512), 4)], [((320, 512), 2)])
        + [Line("assign", (800, 1333), 16, boxes=100)],
        repeat=3,
        warmup=1,
        memory="process",
    ),
    "full": dict(
        lines=_lines(
            [((800, 1333), 1), ((800, 1333), 8), ((320, 512), 1), ((320, 512), 8)],
            [((800, 1333), 2), ((800, 1333), 8)],
        )
        + [Line("assign", (800, 1333), 16, boxes=100)],
        repeat=5,
        warmup=2,
        memory="process",
    ),
    # the GPU check: COCO size, batch 1 and 8, fp32 and fp16 AMP (bf16 on the CPU, where fp16
    # autocast is slow)
    "gpu_check": dict(
        lines=_lines(
            [((800, 1333), 1), ((800, 1333), 8)],
            [((800, 1333), 1), ((800, 1333), 8)],
            (None, "fp16"),
        ),
        repeat=10,
        warmup=3,
        memory="line",
        models=("gfl", "gflv2", "fcos"),
    ),
    "gpu_check_smoke": dict(
        lines=_lines(
            [((64, 96), 1), ((64, 96), 2)], [((64, 96), 1), ((64, 96), 2)], (None, "fp16")
        ),
        repeat=1,
        warmup=0,
        memory="line",
        models=("gfl", "gflv2", "fcos"),
    ),
}


# ------------------------------------------------------------------ models and data
def build_model(name, device):
    """R-50-FPN GFL / GFL V2 / FCOS / RetinaNet, randomly initialised, 80 classes."""
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig, instantiate

    if name in ("gfl", "gflv2"):
        cfg = LazyConfig.load(get_config_file(f"COCO-Detection/{name}_R_50_FPN_1x.py"))
    else:
        cfg = model_zoo.get_config(f"COCO-Detection/{name}_R_50_FPN_1x.py")
    cfg.model.backbone.bottom_up.freeze_at = 2  # as in the COCO configs of all three
    # one backbone for all: GFL's (pytorch-style ResNet-50, stride on the 3x3 conv).
    # detectron2's FCOS/RetinaNet configs put it on the 1x1 conv, which costs less.
    cfg.model.backbone.bottom_up.stages.stride_in_1x1 = False
    torch.manual_seed(0)
    return instantiate(cfg.model).to(device)


def coco_like_boxes(n_images, size, seed, mean_boxes=7, crowded_every=8):
    """
    Per image, Instances with K boxes (7 to 600 px sides) and classes: K is
    1 + Poisson(mean_boxes - 1) with every ``crowded_every``-th image holding
    50+ boxes; ``crowded_every=0``: exactly ``mean_boxes`` boxes per image.
    """
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = []
    for i in range(n_images):
        if crowded_every and (i + 1) % crowded_every == 0:
            k = 50 + int(torch.randint(0, 10, (1,), generator=g))
        elif crowded_every:
            k = int(torch.poisson(torch.tensor(float(mean_boxes - 1)), generator=g)) + 1
        else:
            k = mean_boxes  # exactly this many
        side = torch.exp(torch.empty(k, 2).uniform_(2.0, 6.4, generator=g)).clamp(
            max=min(h, w) * 0.9
        )  # 7-600 px
        xy = torch.rand(k, 2, generator=g) * (torch.tensor([w, h]) - side)
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.cat([xy, xy + side], 1))
        inst.gt_classes = torch.randint(0, 80, (k,), generator=g)
        out.append(inst)
    return out


def batch_inputs(n, size, with_gt, seed=0):
    g = torch.Generator().manual_seed(seed)
    gts = coco_like_boxes(n, size, seed) if with_gt else [None] * n
    items = []
    for gt in gts:
        item = {"image": torch.randint(0, 256, (3, *size), generator=g).float()}
        if gt is not None:
            item["instances"] = gt
        items.append(item)
    return items


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------ what is timed
def inference_fn(model, inputs):
    def run():
        with torch.no_grad():
            model(inputs)

    return run


def training_fn(model, inputs):
    from detectron2.utils.events import EventStorage

    def run():
        with EventStorage():
            losses = model(inputs)
            sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    return run


def assignment_fn(model, size, n_images, n_boxes, device):
    """Label assignment alone: the anchors of the model's padded feature maps, its label_anchors."""
    gts = [
        inst.to(device)
        for inst in coco_like_boxes(n_images, size, seed=2, mean_boxes=n_boxes, crowded_every=0)
    ]
    anchors = anchors_for_image_size(model, size, device)

    def run():
        with torch.no_grad():
            model.label_anchors(anchors, gts)

    return run


def _autocast(run, device, precision):
    if precision is None:
        return run

    def wrapped():
        with torch.autocast(torch.device(device).type, dtype=_AMP[precision]):
            run()

    return wrapped


def line_fn(model, line: Line, device):
    """The function timed for ``model`` on ``line`` (the model is put in the line's mode)."""
    if line.kind == "assign":
        return assignment_fn(model, line.size, line.batch, line.boxes, device)
    model.train(line.kind == "train")
    inputs = batch_inputs(
        line.batch, line.size, with_gt=line.kind == "train", seed=1 if line.kind == "train" else 0
    )
    make = training_fn if line.kind == "train" else inference_fn
    return _autocast(make(model, inputs), device, line.precision)


# ------------------------------------------------------------------ measurements
def interleaved(fns, device, repeat, warmup):
    """Time several functions round-robin (each repeat runs every one), so that drifts of
    the machine's speed hit all models alike. Returns {name: stats}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {
        n: dict(median=statistics.median(t), min=min(t), max=max(t), runs=len(t))
        for n, t in times.items()
    }


def peak_rss_mib():
    """Peak resident memory of this process. Linux's VmHWM, unlike ru_maxrss, is not
    inherited from the parent across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_peak_mib(fn, device):
    """Peak GPU memory one run allocates beyond what was allocated before it (MiB)."""
    sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _free(device):
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def _try_each(fns: Dict, line: Line, results: Dict, device) -> Dict:
    """
    Run every model once; a failure is recorded as the model's result of the line. Returns the
    ones that ran.
    """
    ok = {}
    for name, fn in fns.items():
        try:
            fn()
            ok[name] = fn
        except Exception as e:
            results[name][line.label] = dict(
                error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
            )
            _free(device)
    return ok


def measure(
    models: Dict,
    lines: Sequence[Line],
    device,
    repeat: int,
    warmup: int,
    line_memory: bool = False,
    log=print,
) -> Tuple[Dict, Dict]:
    """
    Every line, every model (interleaved): ``(results, lines)`` in the format of the module's
    docstring.
    With ``line_memory`` (CUDA), each line also gets a memory line: what one run allocates.
    """
    results = {m: {} for m in models}
    meta = {}
    for line in lines:
        log(f"[benchmark] {line.name}")
        fns = _try_each(
            {n: line_fn(m, line, device) for n, m in models.items()}, line, results, device
        )
        per = line.batch if line.kind == "infer" else 1
        for name, st in interleaved(fns, device, repeat, warmup).items():
            results[name][line.label] = {k: (v / per if k != "runs" else v) for k, v in st.items()}
        memory = None
        if line_memory and str(device).startswith("cuda") and line.kind != "assign":
            memory = f"{line.name} peak memory (MiB, GPU, one run)"
            for name, fn in fns.items():
                peak = _gpu_peak_mib(fn, device)
                results[name][memory] = dict(median=peak, min=peak, max=peak, runs=1)
        meta[line.label] = dict(asdict(line), memory=memory)
        _free(device)
    return results, meta


def _largest_training_line(plan) -> Line:
    return max(
        (ln for ln in plan["lines"] if ln.kind == "train"),
        key=lambda ln: ln.batch * ln.size[0] * ln.size[1],
    )


def child_peak_memory(name: str, device: str, mode: str) -> Dict:
    """
    Peak memory of training at the mode's largest training line, measured in this (fresh)
    process.
    """
    line = _largest_training_line(PLANS[mode])
    run = line_fn(build_model(name, device), line, device)
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run()
    run()
    if str(device).startswith("cuda"):
        peak, what = torch.cuda.max_memory_allocated() / 2**20, "GPU max allocated"
    else:
        peak, what = peak_rss_mib(), "peak RSS of the process"
    h, w = line.size
    return {
        f"train {h}x{w} b{line.batch} peak memory (MiB, {what})": dict(
            median=peak, min=peak, max=peak, runs=1
        )
    }


def _fresh_process_memory(name: str, device: str, mode: str, threads: int) -> Dict:
    """
    :func:`child_peak_memory` in a new Python process (this package importable there however it
    was found).
    """
    cmd = [
        sys.executable,
        "-m",
        "gfl_studies.benchmark",
        "--memory",
        name,
        "--device",
        device,
        "--mode",
        mode,
    ]
    cmd += ["--threads", str(threads)] if threads else []
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: peak memory of {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratios(results: Dict, models: Sequence[str]) -> Dict:
    """{label: {"a/b": median of a / median of b}} for the pairs of :data:`RATIOS` that both ran."""
    out = {}
    for label in sorted({label for m in models for label in results[m]}):
        for num, den in RATIOS:
            a, b = results.get(num, {}).get(label), results.get(den, {}).get(label)
            if a and b and "median" in a and "median" in b:
                out.setdefault(label, {})[f"{num}/{den}"] = a["median"] / b["median"]
    return out


def run_benchmark(
    models: Sequence[str],
    device: str,
    mode: str,
    threads: int = 0,
    repeat: Optional[int] = None,
    warmup: Optional[int] = None,
    log=print,
) -> Dict:
    """
    Measure ``models`` on ``device`` with the plan of ``mode`` (:data:`PLANS`); the result
    (module docstring).
    """
    plan = PLANS[mode]
    repeat = plan["repeat"] if repeat is None else repeat
    warmup = plan["warmup"] if warmup is None else warmup
    # randomly initialised weights can drive activations into denormal floats,
    # which are very slow on some CPUs and would time the weights, not the models
    torch.set_flush_denormal(True)
    t0 = time.time()
    memory = {}
    if plan["memory"] == "process":
        for m in models:
            log(f"[benchmark] peak training memory of {m} (fresh process)")
            memory[m] = _fresh_process_memory(m, device, mode, threads)
    lines = [
        ln
        for ln in plan["lines"]
        if ln.precision is None or str(device).startswith("cuda") or ln.precision == "bf16"
    ]
    if not str(device).startswith("cuda") and any(ln.precision == "fp16" for ln in plan["lines"]):
        # fp16 autocast on the CPU is emulated and slow: the CPU's AMP is bf16
        lines += [
            Line(ln.kind, ln.size, ln.batch, "bf16", ln.boxes)
            for ln in plan["lines"]
            if ln.precision == "fp16"
        ]
    built = {m: build_model(m, device) for m in models}
    results, meta = measure(
        built, lines, device, repeat, warmup, line_memory=plan["memory"] == "line", log=log
    )
    for m in models:
        results[m].update(memory.get(m, {}))
    return dict(
        date=time.strftime("%Y-%m-%d"),
        device=_device_name(device),
        torch=torch.__version__,
        mode=mode,
        repeat=repeat,
        warmup=warmup,
        lines=meta,
        results=results,
        ratios=ratios(results, models),
        seconds=time.time() - t0,
    )


def _device_name(device: str) -> str:
    return (
        torch.cuda.get_device_name(0)
        if str(device).startswith("cuda")
        else f"CPU ({os.cpu_count()} cores)"
    )


# ------------------------------------------------------------------ report
def _fmt(v):
    return f"{v:.4f}" if v < 10 else f"{v:.1f}"


def _cell(r):
    if r is None:
        return "-"
    if "error" in r:
        return f"FAILED: {r['error'][:80]}"
    return f"{_fmt(r['median'])} ({_fmt(r['min'])}-{_fmt(r['max'])})"


def _header(data: Dict, models: Sequence[str]) -> str:
    when = f"measured {data['date']}, " if "date" in data else ""
    took = f", {data['seconds']:.0f} s" if "seconds" in data else ""
    return (
        f"{', '.join(models)} with one R-50-FPN backbone, random weights, interleaved; "
        f"{data['device']}, torch "
        f"{data['torch']}, {when}{data['mode']} mode, {data['repeat']} runs after {data['warmup']} "
        f"warm-up{took}. "
        "Seconds per image (inference), per iteration (training), per call (assignment): median "
        "(min-max); "
        "the ratios are of the medians."
    )


def render(data: Dict) -> str:
    """The Markdown of a result: where and how it was measured, one row per line, the ratios."""
    results = data["results"]
    models = [m for m in MODELS if m in results] + [m for m in results if m not in MODELS]
    labels = sorted(
        {label for m in models for label in results[m]}, key=lambda s: (s.split()[0], s)
    )
    pairs = [f"{a}/{b}" for a, b in RATIOS if a in models and b in models]
    rows = ([data["note"], ""] if "note" in data else []) + [_header(data, models), ""]
    rows += [
        "| measure | "
        + " | ".join(f"{m} median (min-max)" for m in models)
        + "".join(f" | {p}" for p in pairs)
        + " |",
        "|" + "---|" * (1 + len(models) + len(pairs)),
    ]
    for label in labels:
        line_ratios = data["ratios"].get(label, {})
        cells = [_cell(results[m].get(label)) for m in models]
        cells += [f"{line_ratios[p]:.3f}" if p in line_ratios else "-" for p in pairs]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _main(argv=None):
    """The fresh process of :func:`child_peak_memory`: prints its result as one JSON line."""
    p = argparse.ArgumentParser(description="one model's peak training memory, in this process")
    p.add_argument("--memory", required=True, choices=MODELS, metavar="MODEL")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="quick", choices=list(PLANS))
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(json.dumps(child_peak_memory(args.memory, args.device, args.mode)))


if __name__ == "__main__":
    _main()
