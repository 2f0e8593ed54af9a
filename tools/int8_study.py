#!/usr/bin/env python
"""
AP and latency of a trained GFL's INT8 export against its fp32 export, both in
ONNX Runtime on the config's test set (gfl_studies.int8_study): per-channel
weight scales with 7-bit weights (gfl-d2's default, for AVX2 CPUs) and 8-bit
ones, and per-tensor scales.

    python tools/int8_study.py --config-file configs/Synthetic/gfl_R_18_FPN_shapes_quickstart.py \
        --weights output/gfl_R_18_FPN_shapes/model_final.pth --name int8_quickstart_cpu_2cores
    python tools/int8_study.py --report --name int8_quickstart_cpu_2cores
"""

import argparse
import os

from gfl_d2.lazy_config import load_lazy_config, prepare_datasets, resolve_num_classes
from gfl_studies import int8_study
from gfl_studies.reports import add_report_arguments, render_again


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", default="")
    p.add_argument("--weights", default="")
    p.add_argument("--calibration", type=int, default=64, help="training images for the ranges")
    p.add_argument("--test-images", type=int, default=300)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (key=value)")
    add_report_arguments(p, "int8_study")
    args = p.parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, int8_study.render))
        return
    if not args.config_file or not args.weights:
        p.error("--config-file and --weights are needed")
    cfg = load_lazy_config(args.config_file, args.opts, resolve=False)
    prepare_datasets(cfg)
    resolve_num_classes(cfg)
    data = int8_study.study(
        cfg, args.config_file, args.weights, args.calibration, args.test_images, args.runs,
        args.threads,
    )  # fmt: skip
    int8_study.write(args.results, args.name, data)
    print(render_again(args.results, args.name, int8_study.render))


if __name__ == "__main__":
    main()
