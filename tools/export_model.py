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
import argparse
import json
import logging
import os
import sys

import numpy as np
import torch

from detectron2.config import instantiate
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gfl_d2  # noqa: F401,E402
from gfl_d2.engine import CheckedCheckpointer, load_lazy_config  # noqa: E402

logger = logging.getLogger("detectron2")
BOX_TOL, SCORE_TOL = 1e-3, 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--export-method", choices=["tracing", "scripting"], default="tracing")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--sample-image", default=None, help="an image to trace with and to check the export on")
    p.add_argument("--keep-box-distributions", action="store_true", help="also export pred_box_dists/pred_box_std")
    p.add_argument("--device", default="cpu", help="device to trace and check on (e.g. cuda); default cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    return p.parse_args(argv)


def sample_input(cfg, path):
    """The sample image as the model's input: test-time resize, (3, H, W) float tensor."""
    mapper = cfg.dataloader.test.mapper
    fmt = mapper.get("image_format", "BGR")
    if path is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    else:
        image = read_image(path, format=fmt)
    aug = T.AugInput(image)
    T.AugmentationList([instantiate(a) for a in mapper.get("augmentations", [])])(aug)
    return torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)).astype("float32"))


def inference(model, inputs):
    # the model's own output size: no resize back to an original size
    return [{"instances": model(inputs)[0]["instances"]}]


def export(cfg, args):
    if args.export_method == "scripting":
        raise SystemExit(
            "error: --export-method scripting is not supported for GFL: detectron2 can script only models whose "
            "outputs are typed Instances (GeneralizedRCNN); use --export-method tracing"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    model = instantiate(cfg.model).to(args.device).eval()
    if cfg.train.init_checkpoint:
        CheckedCheckpointer(model).load(cfg.train.init_checkpoint)
    else:
        logger.warning("no train.init_checkpoint: exporting randomly initialised weights")
    if not args.keep_box_distributions:
        model.output_box_distributions = False
    image = sample_input(cfg, args.sample_image).to(args.device)
    adapter = TracingAdapter(model, [{"image": image}], inference)
    adapter.eval()  # exporters restore the wrapper's mode afterwards
    os.makedirs(args.output, exist_ok=True)
    fields = sorted(model([{"image": image}])[0]["instances"].get_fields())
    output_names = fields + ["image_size"]
    if args.format == "torchscript":
        path = os.path.join(args.output, "model.ts")
        with torch.no_grad():
            traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        traced.save(path)
    else:
        path = os.path.join(args.output, "model.onnx")
        dynamic = {"image": {1: "height", 2: "width"}}
        dynamic.update({name: {0: "detections"} for name in fields})
        with torch.no_grad():
            torch.onnx.export(
                adapter, adapter.flattened_inputs, path, opset_version=17, dynamo=False,
                input_names=["image"], output_names=output_names, dynamic_axes=dynamic,
            )
    logger.info(f"exported {path}; outputs: {output_names}")
    report = verify(model, path, args.format, image, fields)
    # the traced graph keeps height and width dynamic: check another size too
    h, w = image.shape[-2:]
    other = torch.nn.functional.interpolate(image[None], size=(max(32, h * 3 // 4), w), mode="bilinear")[0]
    report["other_size"] = dict(verify(model, path, args.format, other, fields), size=list(other.shape[-2:]))
    with open(os.path.join(args.output, "export_check.json"), "w") as f:
        json.dump(dict(report, outputs=output_names, config=args.config_file), f, indent=2)
    return path, report


def run_exported(path, fmt, image):
    """The exported model's outputs as numpy arrays, and the runtime that ran it."""
    if fmt == "torchscript":
        with torch.no_grad():
            outs = torch.jit.load(path, map_location=image.device)(image)
        return [o.cpu().numpy() for o in outs], f"torch.jit on {image.device}"
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if image.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(path, providers=providers)
    outs = session.run(None, {session.get_inputs()[0].name: image.cpu().numpy()})
    return outs, f"onnxruntime {session.get_providers()[0]}"


def verify(model, path, fmt, image, fields):
    """Compare the exported model with the eager one on ``image``; SystemExit if they disagree."""
    image = image.round()  # an image as the loader gives it
    with torch.no_grad():
        eager = model([{"image": image}])[0]["instances"]
    outs, runtime = run_exported(path, fmt, image)
    outs = dict(zip(fields, outs))
    eager = eager.to("cpu")
    boxes, scores, classes = eager.pred_boxes.tensor.numpy(), eager.scores.numpy(), eager.pred_classes.numpy()
    if outs["pred_boxes"].shape != boxes.shape:
        raise SystemExit(f"error: export check failed: {outs['pred_boxes'].shape[0]} detections vs {len(boxes)} eager")
    report = dict(
        detections=int(len(boxes)),
        max_box_diff=float(np.abs(outs["pred_boxes"] - boxes).max(initial=0.0)),
        max_score_diff=float(np.abs(outs["scores"] - scores).max(initial=0.0)),
        classes_equal=bool(np.array_equal(outs["pred_classes"], classes)),
        runtime=runtime,
    )
    ok = report["max_box_diff"] <= BOX_TOL and report["max_score_diff"] <= SCORE_TOL and report["classes_equal"]
    logger.info(f"export check at {tuple(image.shape[-2:])}: {report} -> {'OK' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit(f"error: the exported model disagrees with the eager model: {report}")
    return report


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    cfg = load_lazy_config(args.config_file, args.opts)
    return export(cfg, args)


if __name__ == "__main__":
    main()
