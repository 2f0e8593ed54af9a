#!/usr/bin/env python
"""
Export a GFL model for deployment outside Python, in the manner of detectron2's
``tools/deploy/export_model.py``: TorchScript (``model.ts``) or ONNX
(``model.onnx``) by tracing with detectron2's ``TracingAdapter``, then checked
against the eager model on the sample image.

    python tools/export_model.py --config-file configs/COCO-Detection/gfl_R_50_FPN_1x.py \
        --export-method tracing --format onnx --sample-image input.jpg --output exported/ \
        train.init_checkpoint=model.pth

The exported model takes one image tensor (3, H, W), float, in the config's
input format (RGB for the GFL configs) already resized as the test mapper does
(shorter side 800 for COCO), and returns, in this order: ``pred_boxes`` (N, 4),
``pred_classes`` (N,), ``scores`` (N,) and the image size (2,) (preceded by
``pred_box_dists`` and ``pred_box_std`` if the config keeps
``model.output_box_distributions=True``; the export turns them off unless
``--keep-box-distributions``). Height and width are dynamic.
"""

import sys

from gfl_d2.cli import config_argument_parser, parse_with_overrides, setup_config
from gfl_d2.errors import UsageError
from gfl_d2.export import export
from gfl_d2.lazy_config import prepare_datasets
from gfl_d2.quantize import quantize_export


def parse_args(argv=None):
    p = config_argument_parser(__doc__, config_required=True)
    p.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument(
        "--sample-image", default=None, help="an image to trace with and to check the export on"
    )
    p.add_argument(
        "--keep-box-distributions",
        action="store_true",
        help="also export pred_box_dists/pred_box_std",
    )
    p.add_argument(
        "--device", default="cpu", help="device to trace and check on (e.g. cuda); default cpu"
    )
    p.add_argument(
        "--outputs",
        choices=["detections", "raw", "decoded"],
        default="detections",
        help="detections (boxes, scores, classes after NMS); raw: the per-location outputs "
        "before any decoding (scores and edge-bin logits); decoded: the per-location boxes and "
        "scores before the selection (threshold, top-k, NMS); raw and decoded are ONNX with a "
        "dynamic batch (docs/deployment.md)",
    )
    p.add_argument(
        "--int8",
        type=int,
        default=0,
        metavar="N",
        help="with --outputs raw or decoded: also write model_<outputs>_int8.onnx, INT8 (ONNX "
        "Runtime's static quantisation) calibrated on the first N images of the calibration "
        "dataset (docs/deployment.md)",
    )
    p.add_argument(
        "--calibration-dataset",
        default=None,
        metavar="NAME",
        help="with --int8: a registered detectron2 dataset (names joined by commas) to calibrate "
        "on, through the config's test-time resize; default: the config's training set",
    )
    return parse_with_overrides(p, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_config(args)
    if args.int8 and args.outputs == "detections":
        raise UsageError(
            "--int8 quantises the per-location outputs: add --outputs raw (or decoded) "
            "--format onnx"
        )
    if args.calibration_dataset and not args.int8:
        raise UsageError("--calibration-dataset calibrates --int8: add --int8 N")
    path, report = export(
        cfg,
        args.output,
        args.format,
        args.export_method,
        args.device,
        args.sample_image,
        args.keep_box_distributions,
        args.config_file,
        args.outputs,
    )
    if args.int8:
        divisor = report["layout"]["size_divisibility"]
        if args.calibration_dataset:
            prepare_datasets(cfg)  # the config's datasets registered, should one be asked for
        int8 = quantize_export(cfg, path, args.int8, divisor, args.calibration_dataset)
        print(f"INT8: {int8}")
    return path, report


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        sys.exit(f"error: {e}")
