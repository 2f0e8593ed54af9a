"""
The GPU check behind ``tools/gpu_check.sh``, its one entry point (see there
for what it runs; the script installs what a bare machine lacks, then runs
``python -m gfl_studies.gpu_check``). Each step runs in its own process
with a time limit, so that one failure does not hide the others; the
summary table says which passed. The benchmark step is ``tools/benchmark.py
--mode gpu_check`` (:mod:`gfl_studies.benchmark`, the one driver). Logs,
checkpoints and exports go to --output; the report to ``<results>/<name>.json``
(``header``, ``rows``) and ``.md``, the benchmark's own report beside it
(``<name>_benchmark.json`` / ``.md``); --results defaults to
projects/GFL/results, and to --output with --smoke.

    bash tools/gpu_check.sh --name gpu_check_h200            # on a CUDA machine
    bash tools/gpu_check.sh --smoke --output /tmp/gc          # tiny sizes, on the CPU too
    bash tools/gpu_check.sh --report --name gpu_check_h100   # the .md again from the .json
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

from .mmdet_peer import SKIP_NOTE
from .reports import DEFAULT_RESULTS, add_report_arguments, render_again, write_report

__all__ = ["run_gpu_check", "benchmark_rows", "render", "parse_args", "main"]

# the repository checkout (this package lives in <repository>/tools/gfl_studies): its tests, tools,
# configs
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBEDDED = "configs/Synthetic/gfl_R_18_FPN_shapes_quickstart.py"


def run_step(name, cmd, log_path, timeout, env=None):
    """Run ``cmd`` (a list) from the repository root; returns (ok, seconds, output tail)."""
    t0 = time.time()
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    # gfl_d2 and gfl_studies from this checkout, installed or not
    paths = [ROOT, os.path.join(ROOT, "tools")] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    )
    env["PYTHONPATH"] = os.pathsep.join(paths)
    print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        out, ok = proc.stdout + proc.stderr, proc.returncode == 0
    except subprocess.TimeoutExpired as e:
        out = (
            (e.stdout or b"").decode(errors="replace")
            if isinstance(e.stdout, bytes)
            else (e.stdout or "")
        )
        out += f"\n[gpu_check] {name}: timed out after {timeout} s"
        ok = False
    with open(log_path, "w") as f:
        f.write(out)
    seconds = time.time() - t0
    print(
        f"[gpu_check] {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s (log: {log_path})",
        flush=True,
    )
    if not ok:
        print(out[-3000:], flush=True)
    return ok, seconds, out


# ---------------------------------------------------------------- steps
def step_tests(args, out):
    ok, sec, log = run_step(
        "tests",
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_model_e2e.py",
            "tests/test_train_net.py",
            "tests/test_deform_conv.py",
        ],
        os.path.join(out, "tests.log"),
        timeout=420,
    )
    summary = [line for line in log.splitlines() if " passed" in line or " failed" in line]
    return [
        dict(
            step="tests (e2e models, entry points, deformable conv on CUDA)",
            ok=ok,
            seconds=sec,
            result=summary[-1] if summary else "",
        )
    ]


def read_losses(metrics_path):
    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    ap = [r["bbox/AP"] for r in rows if "bbox/AP" in r]
    times = [r["time"] for r in rows if "time" in r]
    return (
        losses,
        (ap[-1] if ap else float("nan")),
        (sorted(times)[len(times) // 2] if times else float("nan")),
    )


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
            overrides += [
                "train.amp.enabled=True",
                f"+train.amp.precision={'float16' if precision == 'fp16' else 'bfloat16'}",
            ]
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
            row["result"] = (
                f"loss {first:.3f} -> {last:.3f} ({'finite' if finite else 'NON-FINITE'}, "
                f"{'falls' if falls else 'DOES NOT FALL'}), {it_time:.3f} s/it, AP {ap:.1f}"
            )
        else:
            row["ok"] = False
            row["result"] = "no metrics.json"
        rows.append(row)
    return rows


def step_benchmark(args, out):
    name = f"{args.name}_benchmark"
    ok, sec, _ = run_step(
        "benchmark",
        [
            sys.executable,
            "tools/benchmark.py",
            "--mode",
            "gpu_check_smoke" if args.smoke else "gpu_check",
            "--device",
            "cuda" if torch.cuda.is_available() else "cpu",
            "--results",
            args.results,
            "--name",
            name,
        ],
        os.path.join(out, "benchmark.log"),
        timeout=300,
    )
    path = os.path.join(args.results, f"{name}.json")
    if not ok or not os.path.isfile(path):
        return [
            dict(
                step="benchmark GFL vs FCOS",
                ok=False,
                seconds=sec,
                result="failed: see benchmark.log",
            )
        ]
    with open(path) as f:
        rows = benchmark_rows(json.load(f))
    rows[0]["seconds"] = sec
    return rows


def step_peer(args, out):
    """
    gfl-d2 against MMDetection's GFL (tools/benchmark.py --peer mmdet), or the note that it was
    skipped.
    """
    name = f"{args.name}_mmdet"
    ok, sec, log = run_step(
        "benchmark against MMDetection",
        [
            sys.executable,
            "tools/benchmark.py",
            "--peer",
            "mmdet",
            "--mode",
            "gpu_check_smoke" if args.smoke else "gpu_check",
            "--device",
            "cuda" if torch.cuda.is_available() else "cpu",
            "--results",
            args.results,
            "--name",
            name,
        ],
        os.path.join(out, "benchmark_mmdet.log"),
        timeout=300,
    )
    if ok and SKIP_NOTE in log:  # what tools/benchmark.py prints when nothing was measured
        return [
            dict(
                step="bench vs MMDetection",
                ok=True,
                seconds=sec,
                result=log.strip().splitlines()[-1],
            )
        ]
    path = os.path.join(args.results, f"{name}.json")
    if not ok or not os.path.isfile(path):
        return [
            dict(
                step="bench vs MMDetection",
                ok=False,
                seconds=sec,
                result="failed: see benchmark_mmdet.log",
            )
        ]
    with open(path) as f:
        data = json.load(f)
    ratios = "; ".join(
        f"{label.split(' (')[0]} {r:.3f}"
        for label, line in data["ratios"].items()
        for pair, r in line.items()
        if pair == "gfl/mmdet"
    )
    return [
        dict(
            step="bench vs MMDetection",
            ok=True,
            seconds=sec,
            result=f"gfl-d2/MMDetection time: {ratios}",
        )
    ]


def _line_numbers(data, label, model):
    """(images/s, peak MiB or NaN) of ``model`` on a line, or its error."""
    meta, r = data["lines"][label], data["results"].get(model, {}).get(label)
    if r is None or "error" in r:
        return dict(error=r["error"] if r else "not measured")
    per_call = (
        meta["batch"] if meta["kind"] == "train" else 1
    )  # training times an iteration, inference an image
    memory = data["results"][model].get(meta["memory"]) if meta.get("memory") else None
    return dict(
        images_per_s=per_call / r["median"], peak_mib=memory["median"] if memory else float("nan")
    )


def benchmark_rows(data):
    """
    The summary's rows of a benchmark result (gfl_studies.benchmark): GFL and
    FCOS images/s and memory, GFL V2's against V1, or what failed beside what ran.
    """
    rows = []
    for label, meta in data["lines"].items():
        if meta["kind"] == "assign":
            continue
        line = {
            m: _line_numbers(data, label, m)
            for m in ("gfl", "fcos", "gflv2")
            if m in data["results"]
        }
        g, f_ = line["gfl"], line["fcos"]
        h, w = meta["size"]
        precision = f"{meta['precision']} AMP" if meta["precision"] else "fp32"
        kind = dict(infer="inference", train="training")[meta["kind"]]
        step = f"bench {kind} {h}x{w} b{meta['batch']} {precision}"
        if "error" in g or "error" in f_:
            # what ran is reported beside what failed (detectron2's FCOS fails under fp16 autocast,
            # say)
            parts = [
                f"{n.upper()} {line[n]['images_per_s']:.1f} img/s {_mib(line[n])}"
                for n in ("gfl", "fcos")
                if "error" not in line[n]
            ]
            parts += [
                f"{n.upper()} FAILED: {line[n]['error'][:200]}"
                for n in ("gfl", "fcos")
                if "error" in line[n]
            ]
            rows.append(
                dict(
                    step=step,
                    ok="error" not in g,
                    seconds=None,
                    result=" | ".join(parts) + _v2(line),
                )
            )
            continue
        memory = f", memory {g['peak_mib'] / f_['peak_mib']:.3f}" if f_["peak_mib"] > 0 else ""
        rows.append(
            dict(
                step=step,
                ok=True,
                seconds=None,
                result=(
                    f"GFL {g['images_per_s']:.1f} img/s {_mib(g)} | FCOS {f_['images_per_s']:.1f} "
                    f"img/s {_mib(f_)} | "
                    f"speed GFL/FCOS {g['images_per_s'] / f_['images_per_s']:.3f}{memory}"
                    + _v2(line)
                ),
            )
        )
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
    return (
        f"{result['peak_mib']:.0f} MiB"
        if math.isfinite(result["peak_mib"])
        else "(memory: GPU only)"
    )


def step_export(args, out):
    checkpoint = os.path.join(out, "train_fp32", "model_final.pth")
    if not os.path.isfile(checkpoint):
        return [
            dict(
                step="export",
                ok=False,
                seconds=0,
                result="no trained checkpoint (train fp32 failed?)",
            )
        ]
    image = os.path.join(out, "datasets", "shapes", "val", "000001.png")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for fmt in ("torchscript", "onnx"):
        export_dir = os.path.join(out, f"export_{fmt}")
        ok, sec, _ = run_step(
            f"export {fmt}",
            [
                sys.executable,
                "tools/export_model.py",
                "--config-file",
                EMBEDDED,
                "--format",
                fmt,
                "--device",
                device,
                "--sample-image",
                image,
                "--output",
                export_dir,
                f"train.init_checkpoint={checkpoint}",
            ],
            os.path.join(out, f"export_{fmt}.log"),
            timeout=180,
        )
        result = "failed: see the log"
        check = os.path.join(export_dir, "export_check.json")
        if ok and os.path.isfile(check):
            with open(check) as f:
                c = json.load(f)
            result = (
                f"{c['detections']} detections, max box diff {c['max_box_diff']:.2g} px, max score "
                "diff "
                f"{c['max_score_diff']:.2g}, classes equal {c['classes_equal']}; other size "
                f"{c['other_size']['detections']} detections; runtime {c.get('runtime', '?')}"
            )
        rows.append(dict(step=f"export {fmt} on {device}", ok=ok, seconds=sec, result=result))
    return rows


def run_reporting_step(label: str, cmd, log_path: str, report: str, timeout: int, env=None):
    """
    ``cmd``, a tool that writes the report ``report`` (JSON) to the results
    folder (:func:`run_step`); (seconds, the report's data, or None if the tool
    failed or wrote none).
    """
    ok, sec, _ = run_step(label, cmd, log_path, timeout=timeout, env=env)
    if not ok or not os.path.isfile(report):
        return sec, None
    with open(report) as f:
        return sec, json.load(f)


def step_dcn_speed(args, out):
    """The deformable models against their plain twins on this device (tools/dcn_speed.py)."""
    name = f"{args.name}_dcn_speed"
    size = ["128", "192"] if args.smoke else ["800", "1216"]
    sec, data = run_reporting_step(
        "deformable vs plain",
        [sys.executable, "tools/dcn_speed.py", "--device", "cuda" if torch.cuda.is_available()
         else "cpu", "--size", *size, "--iterations", "1" if args.smoke else "10",
         "--results", args.results, "--name", name],
        os.path.join(out, "dcn_speed.log"), os.path.join(args.results, f"{name}.json"), 240,
    )  # fmt: skip
    if data is None:
        return [dict(step="DCN vs plain", ok=False, seconds=sec, result="failed: see the log")]
    rows = data["rows"]
    result = "; ".join(
        f"{os.path.basename(r['config'])[:-3]} {r['deformable_ms']:.0f} vs "
        f"{r['plain_ms']:.0f} ms/image ({r['ratio']:.2f}x)"
        for r in rows
    )
    return [dict(step=f"DCN vs plain ({'x'.join(size)})", ok=True, seconds=sec, result=result)]


def step_int8(args, out):
    """The embedded model of the train step, fp32 and INT8 in ONNX Runtime on this CPU."""
    checkpoint = os.path.join(out, "train_fp32", "model_final.pth")
    name = f"{args.name}_int8"
    images = dict(train=200 if args.smoke else 1000, val=20 if args.smoke else 100)
    sec, data = run_reporting_step(
        "INT8",
        [sys.executable, "tools/int8_study.py", "--config-file", EMBEDDED, "--weights",
         checkpoint, "--calibration", "8" if args.smoke else "64", "--test-images",
         str(images["val"]), "--runs", "5" if args.smoke else "50", "--results", args.results,
         "--name", name, f"dataloader.train.dataset.names.num_images={images['train']}",
         f"dataloader.test.dataset.names.num_images={images['val']}"],
        os.path.join(out, "int8.log"), os.path.join(args.results, f"{name}.json"), 300,
        env=dict(DETECTRON2_DATASETS=os.path.join(out, "datasets")),
    )  # fmt: skip
    if data is None:
        return [dict(step="INT8 (ONNX Runtime, CPU)", ok=False, seconds=sec, result="see the log")]
    graphs = data["graphs"]
    result = "; ".join(f"{k} AP {g['AP']:.1f}, {g['ms']:.1f} ms" for k, g in graphs.items())
    return [dict(step="INT8 (ONNX Runtime, CPU)", ok=True, seconds=sec, result=result)]


def step_cpu(args, out):
    """
    The ResNet GFL's CPU throughput against the machine's own convolution, and
    bfloat16 where the CPU has it (tools/cpu_throughput.py), with the AP of the
    train step's embedded model in float32 and bfloat16.
    """
    name = f"{args.name}_cpu"
    size = ["128", "192"] if args.smoke else ["800", "1216"]
    sec, data = run_reporting_step(
        "CPU throughput",
        [sys.executable, "tools/cpu_throughput.py", "--size", *size, "--repeat",
         "2" if args.smoke else "3", "--checkpoint",
         os.path.join(out, "train_fp32", "model_final.pth"), "--config", EMBEDDED,
         "--results", args.results, "--name", name],
        os.path.join(out, "cpu_throughput.log"), os.path.join(args.results, f"{name}.json"), 300,
        env=dict(DETECTRON2_DATASETS=os.path.join(out, "datasets")),
    )  # fmt: skip
    if data is None:
        return [dict(step="CPU throughput", ok=False, seconds=sec, result="see the log")]
    rows, best = data["rows"], data["best"]
    reference = max(rows[r]["gflops"] for r in data["references"])
    result = f"{best} {rows[best]['gflops'] / reference:.0%} of the best convolution"
    bf16 = [n for n in data["paths"] if n.startswith("bf16")]
    if bf16:
        fastest = min(bf16, key=lambda n: rows[n]["seconds"])
        result += f"; bf16 {rows[best]['seconds'] / rows[fastest]['seconds']:.2f}x fp32"
    else:
        result += "; bf16 refused (no bf16 units)"
    if data.get("ap"):
        result += f", {data['ap']['ap_lost']:.2f} AP lost"
    cpu = data["header"]["cpu"]
    return [dict(step=f"CPU throughput ({cpu['model']}, {cpu['cores']} cores)", ok=True,
                 seconds=sec, result=result)]  # fmt: skip


def render(data):
    """The summary table of a GPU-check report ``{"header": ..., "rows": [...]}``."""
    lines = [data["header"], "", "| step | ok | s | result |", "|---|---|---|---|"]
    for r in data["rows"]:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(
            f"| {r['step']} | {'yes' if r['ok'] else '**NO**'} | {seconds} | {r['result']} |"
        )
    return "\n".join(lines)


def write_summary(args, rows, t0, done):
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores)"
    )
    on_cuda = torch.version.cuda and torch.cuda.is_available()
    cuda = f" (CUDA {torch.version.cuda})" if on_cuda else ""
    header = (
        f"GPU check, {time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}"
        f"{cuda}, "
        f"{'smoke mode, ' if args.smoke else ''}{time.time() - t0:.0f} s in all"
        f"{'' if done else ' (unfinished: later steps did not report)'}"
    )
    return write_report(args.results, args.name, dict(header=header, rows=rows), render)


def run_gpu_check(args):
    """The steps not in ``args.skip``, the report after each; 0 if every row passed, else 1."""
    os.makedirs(args.output, exist_ok=True)
    if not torch.cuda.is_available() and not args.smoke:
        raise SystemExit(
            "error: no CUDA device: the GPU check needs one (--smoke runs the script on the CPU)"
        )
    t0 = time.time()
    rows = []
    steps = [
        (n, s)
        for n, s in (
            ("tests", step_tests),
            ("train", step_train),
            ("benchmark", step_benchmark),
            ("peer", step_peer),
            ("export", step_export),
            ("dcn", step_dcn_speed),
            ("int8", step_int8),
            ("cpu", step_cpu),
        )
        if n not in args.skip
    ]
    table = write_summary(args, rows, t0, done=not steps)
    for i, (name, step) in enumerate(steps):
        rows.extend(step(args, args.output))
        # written after every step, so that a run stopped from outside keeps what it measured
        table = write_summary(args, rows, t0, done=i + 1 == len(steps))
    print("\n" + table)
    return 0 if all(r["ok"] for r in rows) else 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="tools/gpu_check.sh",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", default="gpu_check", help="folder for logs, checkpoints and exports")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes and few iterations; allowed without a GPU"
    )
    p.add_argument(
        "--iters", type=int, default=None, help="training iterations per precision (default 300)"
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["tests", "train", "benchmark", "peer", "export", "dcn", "int8", "cpu"],
    )
    add_report_arguments(p, "gpu_check", results=None)
    args = p.parse_args(argv)
    # a smoke run checks the script, it measures nothing: its report stays with its logs
    args.results = args.results or (args.output if args.smoke else DEFAULT_RESULTS)
    return args


def main(argv=None):
    """The command line of ``tools/gpu_check.sh``: run the check, or render its report again."""
    args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return 0
    return run_gpu_check(args)


if __name__ == "__main__":
    sys.exit(main())
