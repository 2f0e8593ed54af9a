#!/usr/bin/env python
"""
GFL (V1 and V2) against detectron2's own FCOS and RetinaNet, side by side: same R-50-FPN
backbone, same inputs, same device, in one process; the models run
round-robin within every measurement so that drifts of the machine's speed
hit them alike (the driver: ``gfl_studies.benchmark``, also the GPU check's).

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
and the ratios GFL/FCOS, GFL/RetinaNet and GFL V2/GFL. The result is written
as ``<results>/<name>.json`` and the table as ``<name>.md``.

    python tools/benchmark.py                                # the full set, on CUDA if present
    python tools/benchmark.py --device cpu --quick --name benchmark_cpu   # < 3 minutes on 2 cores
    python tools/benchmark.py --report --name benchmark_cpu_2cores   # the .md again from the .json

``--peer mmdet`` measures gfl-d2's GFL against MMDetection 3.3's instead
(gfl_studies.mmdet_peer): the same weights and images, inference at
800x1333 and 320x512, a training step (with the SGD step), ATSS assignment,
and a profile of where the time goes; skipped with a one-line note when
mmdet is not importable.

    python tools/benchmark.py --peer mmdet --device cpu --name benchmark_mmdet_cpu_2cores

``--mode gpu_check`` is the GPU check's plan (COCO size, batch 1 and 8,
inference and training, fp32 and fp16 autocast, GPU memory of every line).
"""

import argparse
import sys

import torch

from gfl_studies import mmdet_peer
from gfl_studies.benchmark import MODELS, PLANS, render, run_benchmark
from gfl_studies.reports import add_report_arguments, render_again, write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--mode", choices=list(PLANS), default=None, help="what to measure (default: full)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="--mode quick: small sizes and batches (CPU: under 3 minutes)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="--mode smoke: tiny sizes, one repeat: every path runs"
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=MODELS,
        help="default: all (gpu_check: gfl gflv2 fcos)",
    )
    p.add_argument(
        "--repeat", type=int, default=None, help="timed runs per line (default: the mode's)"
    )
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default: the mode's)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)"
    )
    p.add_argument(
        "--peer",
        choices=("mmdet",),
        default=None,
        help="measure against MMDetection's GFL instead of detectron2's detectors (see above)",
    )
    add_report_arguments(p, "benchmark")
    args = p.parse_args(argv)
    args.mode = args.mode or ("smoke" if args.smoke else "quick" if args.quick else "full")
    args.models = args.models or list(PLANS[args.mode].get("models", MODELS))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(
            render_again(
                args.results,
                args.name,
                lambda data: (
                    mmdet_peer.render(data) if "profile" in data or "note" in data else render(data)
                ),
            )
        )
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    if args.peer:
        result = mmdet_peer.run_peer_benchmark(
            args.mode,
            args.device,
            args.repeat,
            args.warmup,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
        if "note" in result:
            print(result["note"])  # nothing measured: no report is written
            return result
        print(write_report(args.results, args.name, result, mmdet_peer.render))
        print(f"\nwritten to {args.results}/{args.name}.json and .md")
        return result
    result = run_benchmark(
        args.models,
        args.device,
        args.mode,
        args.threads,
        args.repeat,
        args.warmup,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    print(write_report(args.results, args.name, result, render))
    print(f"\nwritten to {args.results}/{args.name}.json and .md")
    return result


if __name__ == "__main__":
    main()
