#!/usr/bin/env python
"""
Latency of gfl-d2's exported NanoDet-Plus-m (raw and decoded outputs, fp32 and
INT8) against NanoDet's own export of the same weights (fp32, and INT8 by the
same quantisation), in ONNX Runtime on this CPU, batch 1, with the graphs' op
counts (gfl_studies.edge_benchmark); with --config-file and --weights also the
AP that INT8 costs a trained model (gfl_studies.int8_study). Needs a NanoDet
source tree (NANODET_SRC) and a side Python with ``onnxsim`` for NanoDet's
export script (--nanodet-python); neither is a dependency of gfl-d2.

    NANODET_SRC=/path/to/nanodet python tools/edge_benchmark.py \
        --nanodet-python /tmp/nanoenv/bin/python --sizes 320 416 --runs 100 --repeats 3 \
        --config-file configs/Synthetic/nanodet_plus_m_shapes.py \
        --weights output/nanodet_plus_m_shapes/model_final.pth --name edge_benchmark_cpu_2cores
    python tools/edge_benchmark.py --report --name edge_benchmark_cpu_2cores
"""

import argparse
import os
import sys
import tempfile

import numpy as np

from gfl_studies import edge_benchmark, int8_study
from gfl_studies.reports import add_report_arguments, render_again


def calibration_images(size: int, count: int):
    """``count`` training images of the shapes dataset as (1, 3, size, size) BGR float32."""
    import detectron2.data.transforms as T
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    from gfl_d2.data import prepare_shapes

    name = prepare_shapes(split="train", num_images=3000, seed=0)
    images = []
    for d in DatasetCatalog.get(name)[:count]:
        image = read_image(d["file_name"], "BGR")
        resized = T.Resize((size, size)).get_transform(image).apply_image(image)
        images.append(resized.transpose(2, 0, 1)[None].astype(np.float32))
    return images


def measure_size(args, size: int, workdir: str) -> dict:
    """One input size: the graphs exported and checked, timed, and their op counts."""
    calibration = calibration_images(size, args.calibration)
    own = edge_benchmark.export_nanodet_own(args.nanodet_python, "m 320", size, workdir)
    paths = {edge_benchmark.NANODET: own["onnx"]}
    paths[f"{edge_benchmark.NANODET}, INT8"] = edge_benchmark.quantize_nanodet_own(
        own["onnx"], calibration
    )
    paths.update(edge_benchmark.export_gfl_d2(own["pth"], size, workdir, calibration))
    diff = edge_benchmark.same_outputs(own["onnx"], paths[edge_benchmark.GFL_D2], calibration[0])
    load = os.getloadavg()[0]
    timing = edge_benchmark.repeated_timing(
        paths, calibration[0], args.threads, args.runs, args.repeats
    )
    print(size, {k: round(v["median_ms"], 2) for k, v in timing.items()}, f"max diff {diff:.1e}")
    ops = edge_benchmark.graph_ops(paths, workdir)
    profiled = (edge_benchmark.NANODET, edge_benchmark.GFL_D2, f"{edge_benchmark.GFL_D2}, INT8")
    profile = {
        g: edge_benchmark.op_times(paths[g], g, calibration[0], args.threads, args.profile_runs)
        for g in profiled
    }
    return dict(size=size, max_diff=diff, timing=timing, load_before=load, ops=ops, profile=profile)


def ap_study(args) -> dict:
    """The INT8 AP study of --config-file with --weights (its datasets registered first)."""
    from gfl_d2.lazy_config import load_lazy_config, prepare_datasets, resolve_num_classes

    cfg = load_lazy_config(args.config_file, args.opts, resolve=False)
    prepare_datasets(cfg)
    resolve_num_classes(cfg)
    return int8_study.study(
        cfg, args.config_file, args.weights, args.ap_calibration, args.test_images,
        args.runs, args.threads,
    )  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nanodet-python", default=sys.executable, help="Python with onnxsim")
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 416])
    p.add_argument("--runs", type=int, default=100, help="timed runs per graph (at least 50)")
    p.add_argument("--repeats", type=int, default=3, help="timings, each with new sessions")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    p.add_argument("--calibration", type=int, default=32, help="calibration images")
    p.add_argument("--profile-runs", type=int, default=20, help="runs of the op-time profile")
    ap = p.add_argument_group("INT8 AP cost (optional)")
    ap.add_argument("--config-file", default="", help="a trained model's config")
    ap.add_argument("--weights", default="", help="its checkpoint")
    ap.add_argument("--ap-calibration", type=int, default=64, help="its calibration images")
    ap.add_argument("--test-images", type=int, default=300, help="test images evaluated")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (key=value)")
    add_report_arguments(p, "edge_benchmark")
    return p, p.parse_args(argv)


def main(argv=None):
    p, args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, edge_benchmark.render))
        return
    if bool(args.config_file) != bool(args.weights):
        p.error("--config-file and --weights go together")
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    workdir = tempfile.mkdtemp(prefix="gfl_edge_benchmark_")
    data = dict(
        threads=args.threads, runs=args.runs, repeats=args.repeats, sizes=[],
        quantisation=edge_benchmark.quantisation(args.calibration),
    )  # fmt: skip
    for size in args.sizes:
        row = measure_size(args, size, workdir)
        data["ops"], data["profile"] = row.pop("ops"), row.pop("profile")  # of the last size
        data["sizes"].append(row)
        edge_benchmark.write(args.results, args.name, data)
    if args.config_file:
        data["ap"] = ap_study(args)
        edge_benchmark.write(args.results, args.name, data)
    print(render_again(args.results, args.name, edge_benchmark.render))


if __name__ == "__main__":
    main()
