"""
The cost of INT8 for a trained GFL (``tools/int8_study.py`` is the command
line): the model exported with its raw outputs (:mod:`gfl_d2.export_raw`),
quantised (:mod:`gfl_d2.quantize`) with ranges from the first training
images through the test-time resize, both graphs run in ONNX Runtime on the
test set, decoded by the NumPy reference decoder (:mod:`gfl_d2.edge_decoder`)
and evaluated by the config's COCO evaluator; and their batch-1 latency,
in blocks of runs, alternating (:mod:`gfl_studies.onnx_timing`).
"""

import json
import os
import tempfile
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances

from gfl_d2.checkpoint import load_trained_weights
from gfl_d2.edge_decoder import decode
from gfl_d2.export_raw import export_raw_onnx
from gfl_d2.quantize import calibration_records, network_inputs, quantize_onnx

from .onnx_timing import BLOCK, describe, median_latency
from .reports import machine, write_report

__all__ = [
    "load_model", "evaluate", "latency", "study", "render", "render_table",
    "write",
]  # fmt: skip


def load_model(cfg, weights: str) -> torch.nn.Module:
    """The config's model with ``weights`` (trained, EMA preferred), in eval mode on the CPU."""
    model = instantiate(cfg.model).eval()
    load_trained_weights(model, weights)
    model.output_box_distributions = False
    return model


def evaluate(cfg, session, inputs: Sequence[Dict], layout: Dict) -> Dict:
    """
    bbox metrics of the ONNX ``session``'s raw outputs decoded on ``inputs``,
    by the config's evaluator (COCOEvaluator: its ``img_ids``).
    """
    evaluator = instantiate(cfg.dataloader.evaluator)
    evaluator.reset()
    for item in inputs:
        raw = session.run(None, {"images": item["array"]})[0][0]
        found = decode(raw, item["size"], layout)
        record = item["record"]
        h, w = item["size"]
        scale = np.array([record["width"] / w, record["height"] / h] * 2, np.float32)
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.from_numpy(found["boxes"] * scale))
        instances.scores = torch.from_numpy(found["scores"])
        instances.pred_classes = torch.from_numpy(found["classes"])
        evaluator.process([record], [{"instances": instances}])
    # against the images evaluated only, should they be fewer than the test set
    return dict(evaluator.evaluate(img_ids=[item["record"]["image_id"] for item in inputs])["bbox"])


def latency(sessions: Dict, array: np.ndarray, runs: int) -> Dict[str, float]:
    """Median ms of a batch-1 run per session (:func:`median_latency`: blocks, alternating)."""
    feeds = {k: {"images": array} for k in sessions}
    return {k: v["median_ms"] for k, v in median_latency(sessions, feeds, runs).items()}


# the INT8 graphs compared: name -> quantize_onnx's settings (the first is gfl-d2's default)
VARIANTS = {
    "INT8 per-channel": dict(per_channel=True, reduce_range=True),
    "INT8 per-channel, 8-bit weights": dict(per_channel=True, reduce_range=False),
    "INT8 per-tensor": dict(per_channel=False, reduce_range=True),
}


def export_and_quantize(model, calibration: Sequence[Dict], out: str) -> Dict:
    """
    The fp32 raw export and its INT8 versions (``VARIANTS``): ``paths`` (graph
    name -> file) and ``layout``.
    """
    path, _ = export_raw_onnx(model, torch.from_numpy(calibration[0]["array"][0]), out)
    paths = {"fp32": path}
    for i, (name, settings) in enumerate(VARIANTS.items()):
        paths[name] = os.path.join(out, f"model_raw_int8_{i}.onnx")
        quantize_onnx(path, paths[name], [c["array"] for c in calibration], **settings)
    with open(os.path.join(out, "raw_layout.json")) as f:
        layout = json.load(f)
    return dict(paths=paths, layout=layout)


def study(cfg, config_file: str, weights: str, calibration: int, test_images: int, runs: int,
          threads: int) -> Dict:  # fmt: skip
    """
    The study on a LazyConfig ``cfg`` whose datasets are registered: ``weights``
    exported and quantised (``VARIANTS``), each graph's AP on the first
    ``test_images`` test images and its batch-1 latency; the report's data.
    """
    import onnxruntime as ort

    model = load_model(cfg, weights)
    divisor = model.size_divisibility or 32
    ranges = list(network_inputs(cfg, calibration_records(cfg)[:calibration], divisor))
    test_records = instantiate(cfg.dataloader.test.dataset)[:test_images]
    tests = list(network_inputs(cfg, test_records, divisor))
    made = export_and_quantize(model, ranges, tempfile.mkdtemp(prefix="gfl_int8_"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {
        k: ort.InferenceSession(v, options, providers=["CPUExecutionProvider"])
        for k, v in made["paths"].items()
    }
    graphs = {name: evaluate(cfg, s, tests, made["layout"]) for name, s in sessions.items()}
    for name, ms in latency(sessions, tests[0]["array"], runs).items():
        graphs[name]["ms"] = ms
    return dict(
        config=config_file, weights=weights, threads=threads, runs=runs, block=BLOCK,
        calibration_images=len(ranges), test_images=len(tests), graphs=graphs,
        weight_bits="7-bit unless named 8-bit",
    )  # fmt: skip


def render_table(data: Dict) -> List[str]:
    """The AP and latency table of :func:`study`'s data, with the targets' verdicts."""
    lines = [
        "| graph | AP | AP50 | AP75 | AP lost | latency (ms) | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = data["graphs"]["fp32"]
    for name, r in data["graphs"].items():
        lines.append(
            f"| {name} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['AP75']:.1f} | "
            f"{base['AP'] - r['AP']:.1f} | {r['ms']:.2f} | {base['ms'] / r['ms']:.2f}x |"
        )
    return lines


def render(data: Dict) -> str:
    m = data["machine"]
    lines = [
        f"`{data['config']}` with `{data['weights']}`; raw-output export in ONNX Runtime "
        f"{data['onnxruntime']}, {data['threads']} threads, decoded by gfl_d2.edge_decoder, "
        f"evaluated on {data['test_images']} test images; INT8: QDQ, uint8 activations, int8 "
        f"weights ({data.get('weight_bits', 'full range')}), ranges from "
        f"{data['calibration_images']} training images, the head's output convolutions and "
        f"what follows in float. Latency: batch 1, median of {data['runs']} runs, "
        f"{describe(data.get('block'))}; "
        f"{m['device']}, {m['date']}.",
        "",
        *render_table(data),
        "",
        "Targets: at most 1 AP lost, at least 1.5x faster than fp32.",
    ]
    return "\n".join(lines) + "\n"


def write(results: str, name: str, data: Dict) -> str:
    import onnxruntime

    data = dict(data, machine=machine("cpu"), onnxruntime=onnxruntime.__version__)
    return write_report(results, name, data, render)
