#!/usr/bin/env python
"""
Latency of gfl-d2's exported NanoDet-Plus-m (fp32 and INT8) against NanoDet's
own export of the same weights, in ONNX Runtime on this CPU, batch 1
(gfl_studies.edge_benchmark). Needs a NanoDet source tree (NANODET_SRC) and a
side Python with ``onnxsim`` for NanoDet's export script (--nanodet-python);
neither is a dependency of gfl-d2.

    NANODET_SRC=/path/to/nanodet python tools/edge_benchmark.py \
        --nanodet-python /tmp/nanoenv/bin/python --sizes 320 416 --runs 100
    python tools/edge_benchmark.py --report
"""

import argparse
import os
import sys
import tempfile

import numpy as np

from gfl_studies import edge_benchmark
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
        image = T.Resize((size, size)).get_transform(read_image(d["file_name"], "BGR"))
        resized = image.apply_image(read_image(d["file_name"], "BGR"))
        images.append(resized.transpose(2, 0, 1)[None].astype(np.float32))
    return images


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nanodet-python", default=sys.executable, help="Python with onnxsim")
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 416])
    p.add_argument("--runs", type=int, default=100, help="timed runs per model (at least 50)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--calibration", type=int, default=32, help="calibration images")
    add_report_arguments(p, "edge_benchmark")
    args = p.parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, edge_benchmark.render))
        return
    workdir = tempfile.mkdtemp(prefix="gfl_edge_benchmark_")
    sizes = []
    for size in args.sizes:
        calibration = calibration_images(size, args.calibration)
        own = edge_benchmark.export_nanodet_own(args.nanodet_python, "m 320", size, workdir)
        ours = edge_benchmark.export_gfl_d2(own["pth"], size, workdir, calibration)
        diff = edge_benchmark.same_outputs(own["onnx"], ours["fp32"], calibration[0])
        paths = {"NanoDet's export": own["onnx"], "gfl-d2": ours["fp32"]}
        paths["gfl-d2 INT8"] = ours["int8"]
        load = os.getloadavg()[0]
        timing = edge_benchmark.time_sessions(paths, calibration[0], args.threads, args.runs)
        sizes.append(dict(size=size, max_diff=diff, timing=timing, load_before=load))
        print(size, timing, f"max diff {diff:.2e}")
        edge_benchmark.write(args.results, args.name, sizes, args.threads, args.runs)
    print(render_again(args.results, args.name, edge_benchmark.render))


if __name__ == "__main__":
    main()
