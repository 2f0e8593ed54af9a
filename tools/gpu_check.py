#!/usr/bin/env python
"""
The GPU check behind ``tools/gpu_check.sh`` (see there for what it runs).
Each step runs in its own process with a time limit, so that one failure
does not hide the others; the summary table says which passed.

    python tools/gpu_check.py --output gpu_check          # on a CUDA machine
    python tools/gpu_check.py --output /tmp/gc --smoke    # tiny sizes, on the CPU too: checks the script
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = "configs/Synthetic/gfl_R_18_FPN_shapes_quickstart.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="gpu_check", help="folder for logs, metrics and the summary")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and few iterations; allowed without a GPU")
    p.add_argument("--iters", type=int, default=None, help="training iterations per precision (default 300)")
    p.add_argument("--skip", nargs="*", default=[], choices=["tests", "train", "benchmark", "export"])
    p.add_argument("--bench-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_step(name, cmd, log_path, timeout, env=None):
    """Run ``cmd`` (a list) from the repository root; returns (ok, seconds, output tail)."""
    t0 = time.time()
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out, ok = proc.stdout + proc.stderr, proc.returncode == 0
    except subprocess.TimeoutExpired as e:
        out = ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
        out += f"\n[gpu_check] {name}: timed out after {timeout} s"
        ok = False
    with open(log_path, "w") as f:
        f.write(out)
    seconds = time.time() - t0
    print(f"[gpu_check] {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s (log: {log_path})", flush=True)
    if not ok:
        print(out[-3000:], flush=True)
    return ok, seconds, out


# ---------------------------------------------------------------- steps
def step_tests(args, out):
    ok, sec, log = run_step(
        "tests",
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_model_e2e.py",
         "tests/test_train_net.py"],
        os.path.join(out, "tests.log"),
        timeout=420,
    )
    summary = [line for line in log.splitlines() if " passed" in line or " failed" in line]
    return [dict(step="tests (e2e models, entry points)", ok=ok, seconds=sec, result=summary[-1] if summary else "")]


def read_losses(metrics_path):
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    ap = [r["bbox/AP"] for r in rows if "bbox/AP" in r]
    times = [r["time"] for r in rows if "time" in r]
    return losses, (ap[-1] if ap else float("nan")), (sorted(times)[len(times) // 2] if times else float("nan"))


def step_train(args, out):
    iters = args.iters or (20 if args.smoke else 300)
    size = dict(train=200 if args.smoke else 1000, val=20 if args.smoke else 100)
    rows = []
    # detectron2's AMPTrainer needs CUDA: without it (--smoke on the CPU) only fp32 runs
    for precision in ("fp32", "fp16", "bf16") if torch.cuda.is_available() else ("fp32",):
        out_dir = os.path.join(out, f"train_{precision}")
        overrides = [
            f"train.max_iter={iters}",
            f"train.output_dir={out_dir}",
            f"train.log_period={max(1, iters // 30)}",
            "train.checkpointer.period=100000",
            "train.seed=0",
            f"dataloader.train.dataset.names.num_images={size['train']}",
            f"dataloader.test.dataset.names.num_images={size['val']}",
            f"dataloader.train.num_workers={0 if args.smoke else 4}",
            f"dataloader.test.num_workers={0 if args.smoke else 2}",
        ]
        if precision != "fp32":
            overrides += ["train.amp.enabled=True",
                          f"+train.amp.precision={'float16' if precision == 'fp16' else 'bfloat16'}"]
        ok, sec, _ = run_step(
            f"train {precision}",
            [sys.executable, "tools/train_net.py"] + overrides,
            os.path.join(out, f"train_{precision}.log"),
            timeout=240,
            env=dict(DETECTRON2_DATASETS=os.path.join(out, "datasets")),
        )
        row = dict(step=f"train embedded {iters} it, {precision}", ok=ok, seconds=sec, result="")
        metrics = os.path.join(out_dir, "metrics.json")
        if os.path.isfile(metrics):
            losses, ap, it_time = read_losses(metrics)
            k = max(1, len(losses) // 5)
            first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
            finite = all(math.isfinite(x) for x in losses)
            falls = last < 0.9 * first
            row["ok"] = ok and finite and falls
            row["result"] = (f"loss {first:.3f} -> {last:.3f} ({'finite' if finite else 'NON-FINITE'}, "
                             f"{'falls' if falls else 'DOES NOT FALL'}), {it_time:.3f} s/it, AP {ap:.1f}")
        else:
            row["ok"] = False
            row["result"] = "no metrics.json"
        rows.append(row)
    return rows


def step_benchmark(args, out):
    ok, sec, log = run_step(
        "benchmark",
        [sys.executable, os.path.abspath(__file__), "--bench-child", "--output", out] + (["--smoke"] if args.smoke else []),
        os.path.join(out, "benchmark.log"),
        timeout=300,
    )
    path = os.path.join(out, "benchmark.json")
    if not ok or not os.path.isfile(path):
        return [dict(step="benchmark GFL vs FCOS", ok=False, seconds=sec, result="failed: see benchmark.log")]
    with open(path) as f:
        rows = benchmark_rows(json.load(f)["lines"])
    rows[0]["seconds"] = sec
    return rows


def benchmark_rows(lines):
    """The summary's rows of the benchmark's lines: GFL and FCOS images/s and memory, or what failed."""
    rows = []
    for line in lines:
        g, f_ = line["gfl"], line["fcos"]
        step = f"bench {line['mode']} {line['size']} b{line['batch']} {line['precision']}"
        if "error" in g or "error" in f_:
            # what ran is reported beside what failed (detectron2's FCOS fails under fp16 autocast, say)
            parts = [f"{n.upper()} {line[n]['images_per_s']:.1f} img/s {_mib(line[n])}" for n in ("gfl", "fcos")
                     if "error" not in line[n]]
            parts += [f"{n.upper()} FAILED: {line[n]['error'][:200]}" for n in ("gfl", "fcos") if "error" in line[n]]
            rows.append(dict(step=step, ok="error" not in g, seconds=None, result=" | ".join(parts) + _v2(line)))
            continue
        rows.append(dict(
            step=step,
            ok=True,
            seconds=None,
            result=(f"GFL {g['images_per_s']:.1f} img/s {_mib(g)} | FCOS {f_['images_per_s']:.1f} img/s {_mib(f_)} | "
                    f"speed GFL/FCOS {g['images_per_s'] / f_['images_per_s']:.3f}"
                    + (f", memory {g['peak_mib'] / f_['peak_mib']:.3f}" if f_["peak_mib"] > 0 else "") + _v2(line)),
        ))
    return rows


def _v2(line):
    """GFL V2's time and memory relative to V1 on the same line, when both ran."""
    g, v2 = line["gfl"], line.get("gflv2")
    if v2 is None or "error" in g:
        return ""
    if "error" in v2:
        return f" | V2 FAILED: {v2['error'][:200]}"
    memory = f", memory {v2['peak_mib'] / g['peak_mib']:.3f}" if g["peak_mib"] > 0 else ""
    return f" | V2/V1 time {g['images_per_s'] / v2['images_per_s']:.3f}{memory}"


def _mib(result):
    return f"{result['peak_mib']:.0f} MiB" if math.isfinite(result["peak_mib"]) else "(memory: GPU only)"


def bench_child(args):
    """GFL (and V2) vs FCOS, COCO R-50: images/s (interleaved runs) and peak memory per line; writes benchmark.json."""
    from gfl_d2 import benchmark as bm

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_flush_denormal(True)
    size = (128, 192) if args.smoke else (800, 1333)
    batches = (1, 2) if args.smoke else (1, 8)
    repeat, warmup = (1, 0) if args.smoke else (10, 3)
    models = {m: bm.build_model(m, device) for m in ("gfl", "gflv2", "fcos")}
    precisions = {"fp32": None, "fp16 AMP": torch.float16} if device == "cuda" else {"fp32": None, "bf16 AMP": torch.bfloat16}
    lines = []
    for precision, dtype in precisions.items():
        for mode in ("inference", "training"):
            for batch in batches:
                inputs = bm.batch_inputs(batch, size, with_gt=mode == "training", seed=1)
                fns = {}
                for name, model in models.items():
                    model.train(mode == "training")
                    run = (bm.training_fn if mode == "training" else bm.inference_fn)(model, inputs)
                    fns[name] = _autocast(run, device, dtype)
                print(f"[benchmark] {mode} {size} batch {batch} {precision}", file=sys.stderr, flush=True)
                line = dict(mode=mode, size=f"{size[0]}x{size[1]}", batch=batch, precision=precision)
                # a model that fails a line (detectron2's FCOS under autocast, say) is reported, not fatal
                for name, fn in list(fns.items()):
                    try:
                        fn()
                    except Exception as e:
                        line[name] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
                        del fns[name]
                        _free(device)
                stats = bm.interleaved(fns, device, repeat, warmup)
                for name, fn in fns.items():
                    line[name] = dict(images_per_s=batch / stats[name]["median"], peak_mib=_peak_mib(fn, device),
                                      seconds=stats[name])
                lines.append(line)
                _free(device)
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    with open(os.path.join(args.output, "benchmark.json"), "w") as f:
        json.dump(dict(device=device_name, torch=torch.__version__, repeat=repeat, warmup=warmup, lines=lines), f, indent=1)


def _free(device):
    if device == "cuda":
        torch.cuda.empty_cache()


def _autocast(run, device, dtype):
    if dtype is None:
        return run

    def wrapped():
        with torch.autocast(device, dtype=dtype):
            run()
    return wrapped


def _peak_mib(fn, device):
    """Peak memory one run allocates on the GPU beyond what was allocated before it (MiB); NaN on the CPU."""
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def step_export(args, out):
    checkpoint = os.path.join(out, "train_fp32", "model_final.pth")
    if not os.path.isfile(checkpoint):
        return [dict(step="export", ok=False, seconds=0, result="no trained checkpoint (train fp32 failed?)")]
    image = os.path.join(out, "datasets", "shapes", "val", "000001.png")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for fmt in ("torchscript", "onnx"):
        export_dir = os.path.join(out, f"export_{fmt}")
        ok, sec, _ = run_step(
            f"export {fmt}",
            [sys.executable, "tools/export_model.py", "--config-file", EMBEDDED, "--format", fmt, "--device", device,
             "--sample-image", image, "--output", export_dir, f"train.init_checkpoint={checkpoint}"],
            os.path.join(out, f"export_{fmt}.log"),
            timeout=180,
        )
        result = "failed: see the log"
        check = os.path.join(export_dir, "export_check.json")
        if ok and os.path.isfile(check):
            with open(check) as f:
                c = json.load(f)
            result = (f"{c['detections']} detections, max box diff {c['max_box_diff']:.2g} px, max score diff "
                      f"{c['max_score_diff']:.2g}, classes equal {c['classes_equal']}; other size "
                      f"{c['other_size']['detections']} detections; runtime {c.get('runtime', '?')}")
        rows.append(dict(step=f"export {fmt} on {device}", ok=ok, seconds=sec, result=result))
    return rows


def summary_table(rows, header):
    lines = [header, "", "| step | ok | s | result |", "|---|---|---|---|"]
    for r in rows:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['step']} | {'yes' if r['ok'] else '**NO**'} | {seconds} | {r['result']} |")
    return "\n".join(lines)


def write_summary(args, rows, t0, done):
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    header = (f"GPU check, {time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}"
              f"{' (CUDA ' + torch.version.cuda + ')' if torch.version.cuda and torch.cuda.is_available() else ''}, "
              f"{'smoke mode, ' if args.smoke else ''}{time.time() - t0:.0f} s in all"
              f"{'' if done else ' (unfinished: later steps did not report)'}")
    table = summary_table(rows, header)
    with open(os.path.join(args.output, "gpu_check.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "gpu_check.json"), "w") as f:
        json.dump(dict(header=header, rows=rows), f, indent=1)
    return table


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    if args.bench_child:
        return bench_child(args)
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit("error: no CUDA device: the GPU check needs one (--smoke runs the script on the CPU)")
    t0 = time.time()
    rows = []
    steps = [(n, s) for n, s in (("tests", step_tests), ("train", step_train), ("benchmark", step_benchmark),
                                 ("export", step_export)) if n not in args.skip]
    table = write_summary(args, rows, t0, done=not steps)
    for i, (name, step) in enumerate(steps):
        rows.extend(step(args, args.output))
        # written after every step, so that a run stopped from outside keeps what it measured
        table = write_summary(args, rows, t0, done=i + 1 == len(steps))
    print("\n" + table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
