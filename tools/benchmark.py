#!/usr/bin/env python
"""
GFL (V1 and V2) against detectron2's own FCOS and RetinaNet, side by side: same R-50-FPN
backbone, same inputs, same device, in one process; the models run
round-robin within every measurement so that drifts of the machine's speed
hit them alike.

For each model it measures (median and min-max over repeated runs after
warm-up):
  * inference latency per image (forward + post-processing) at 800x1333 and
    at a small size, batch 1 and batch 8;
  * training iteration time (forward + backward) at batch 2 and 8, with
    COCO-like ground truth (7 boxes per image on average, some images with 50+);
  * label assignment alone (GFL's ATSS, FCOS's matching, RetinaNet's IoU
    matcher) for 16 images x 100 boxes at 800x1333;
  * peak memory of training: the peak RSS of a fresh process on the CPU, the
    max allocated memory on a GPU;
and prints the ratios GFL/FCOS, GFL/RetinaNet and GFL V2/GFL. Peak memory is measured in
a fresh process per model. Results are also written as JSON.

    python tools/benchmark.py                     # the full set, on CUDA if present
    python tools/benchmark.py --device cpu --quick  # smaller sizes and batches: < 3 minutes on 2 cores
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

from gfl_d2.benchmark import (
    assignment_fn,
    batch_inputs,
    build_model,
    inference_fn,
    interleaved,
    peak_rss_mib,
    training_fn,
)

MODELS = ("gfl", "gflv2", "fcos", "retinanet")
# (numerator, denominator) of the printed ratios
RATIOS = (("gfl", "fcos"), ("gfl", "retinanet"), ("gflv2", "gfl"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes and batches (CPU: under 3 minutes)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that every path runs")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--repeat", type=int, default=None, help="timed runs per line (default 5, quick 3, smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2, quick 1, smoke 0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    p.add_argument("--output", default="benchmark.json")
    p.add_argument("--child", nargs=2, metavar=("TASK", "MODEL"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def plan(args):
    """The measured lines, by mode."""
    if args.smoke:
        return dict(infer=[((128, 192), 1), ((64, 96), 2)], train=[((128, 192), 2)], assign=((256, 384), 2, 20),
                    repeat=args.repeat or 1, warmup=args.warmup if args.warmup is not None else 0)
    if args.quick:
        return dict(infer=[((800, 1333), 1), ((320, 512), 1), ((320, 512), 4)], train=[((320, 512), 2)],
                    assign=((800, 1333), 16, 100), repeat=args.repeat or 3,
                    warmup=args.warmup if args.warmup is not None else 1)
    return dict(infer=[((800, 1333), 1), ((800, 1333), 8), ((320, 512), 1), ((320, 512), 8)],
                train=[((800, 1333), 2), ((800, 1333), 8)], assign=((800, 1333), 16, 100),
                repeat=args.repeat or 5, warmup=args.warmup if args.warmup is not None else 2)


def measure_all(args, p):
    models = {m: build_model(m, args.device) for m in args.models}
    results = {m: {} for m in models}

    def record(line, stats):
        for m, st in stats.items():
            results[m][line] = st

    for size, batch in p["infer"]:
        print(f"[benchmark] inference {size} batch {batch}", file=sys.stderr, flush=True)
        inputs = batch_inputs(batch, size, with_gt=False)
        for m in models.values():
            m.eval()
        stats = interleaved({n: inference_fn(m, inputs) for n, m in models.items()}, args.device, p["repeat"], p["warmup"])
        record(f"infer {size[0]}x{size[1]} b{batch} (s/img)",
               {n: {k: (v / batch if k != "runs" else v) for k, v in st.items()} for n, st in stats.items()})
    for size, batch in p["train"]:
        print(f"[benchmark] training {size} batch {batch}", file=sys.stderr, flush=True)
        inputs = batch_inputs(batch, size, with_gt=True, seed=1)
        for m in models.values():
            m.train()
        record(f"train {size[0]}x{size[1]} b{batch} (s/iter)",
               interleaved({n: training_fn(m, inputs) for n, m in models.items()}, args.device, p["repeat"], p["warmup"]))
    size, n_images, n_boxes = p["assign"]
    print(f"[benchmark] label assignment {n_images} images x {n_boxes} boxes", file=sys.stderr, flush=True)
    record(f"assign {n_images}x{n_boxes} boxes {size[0]}x{size[1]} (s)",
           interleaved({n: assignment_fn(m, size, n_images, n_boxes, args.device) for n, m in models.items()},
                       args.device, p["repeat"], p["warmup"]))
    return results


def child_peak_memory(name, device, p):
    """Peak memory of training at the largest training batch, in a fresh process (CPU: peak RSS)."""
    model = build_model(name, device).train()
    size, batch = max(p["train"], key=lambda sb: sb[1] * sb[0][0] * sb[0][1])
    run = training_fn(model, batch_inputs(batch, size, with_gt=True, seed=1))
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    run()
    run()
    if str(device).startswith("cuda"):
        peak, what = torch.cuda.max_memory_allocated() / 2**20, "GPU max allocated"
    else:
        peak, what = peak_rss_mib(), "peak RSS of the process"
    return {f"train {size[0]}x{size[1]} b{batch} peak memory (MiB, {what})": dict(median=peak, min=peak, max=peak, runs=1)}


def run_child(task, name, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", task, name, "--device", args.device,
           "--output", os.devnull]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if proc.returncode != 0:
        raise SystemExit(f"benchmark of {name} ({task}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(v):
    return f"{v:.4f}" if v < 10 else f"{v:.1f}"


def report(results, models):
    lines = sorted({line for m in models for line in results[m]}, key=lambda s: (s.split()[0], s))
    head = "| measure | " + " | ".join(f"{m} median (min-max)" for m in models)
    ratios = [(a, b) for a, b in RATIOS if a in models and b in models]
    head += "".join(f" | {a}/{b}" for a, b in ratios) + " |"
    rows = [head, "|" + "---|" * (1 + len(models) + len(ratios))]
    ratio_table = {}
    for line in lines:
        cells = []
        for m in models:
            r = results[m].get(line)
            cells.append(f"{fmt(r['median'])} ({fmt(r['min'])}-{fmt(r['max'])})" if r else "-")
        for num, den in ratios:
            a, b = results[num].get(line), results[den].get(line)
            ratio = a["median"] / b["median"] if a and b else None
            ratio_table.setdefault(line, {})[f"{num}/{den}"] = ratio
            cells.append(f"{ratio:.3f}" if ratio else "-")
        rows.append(f"| {line} | " + " | ".join(cells) + " |")
    return "\n".join(rows), ratio_table


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # randomly initialised weights can drive activations into denormal floats,
    # which are very slow on some CPUs and would time the weights, not the models
    torch.set_flush_denormal(True)
    p = plan(args)
    if args.child:
        task, name = args.child
        result = {"memory": child_peak_memory}[task](name, args.device, p)
        print(json.dumps(result))
        return result
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    t0 = time.time()
    memory = {}
    for m in args.models:
        print(f"[benchmark] peak training memory of {m} (fresh process)", file=sys.stderr, flush=True)
        memory[m] = run_child("memory", m, args)
    results = measure_all(args, p)
    for m in args.models:
        results[m].update(memory[m])
    table, ratios = report(results, args.models)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(f"\nGFL (V1, V2) vs detectron2's FCOS and RetinaNet, R-50-FPN, {device}, torch {torch.__version__}, {mode} mode, "
          f"{p['repeat']} runs after {p['warmup']} warm-up, {time.time() - t0:.0f} s\n")
    print(table)
    out = dict(device=device, torch=torch.__version__, mode=mode, repeat=p["repeat"], warmup=p["warmup"],
               results=results, ratios=ratios, seconds=time.time() - t0)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nwritten to {args.output}")
    return out


if __name__ == "__main__":
    main()
