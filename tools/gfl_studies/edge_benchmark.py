"""
Latency of gfl-d2's exported NanoDet-Plus against NanoDet's own export of the
same weights, in ONNX Runtime on this machine's CPU (``tools/edge_benchmark.py``
is the command line).

NanoDet's side runs in a side environment (:mod:`gfl_studies.nanodet_runtime`:
a NanoDet source tree, Lightning stood in for, ``onnxsim`` installed there):
its model built from its own config, saved as its ``.pth``, exported by its
own ``tools/export_onnx.py`` (opset 11, static 1x3xHxW, simplified). gfl-d2's
side converts that file with the library's converter and exports the raw
outputs (dynamic batch, height and width; the normalisation inside the graph),
then quantises them to INT8 (:mod:`gfl_d2.quantize`). Both fp32 graphs are
first checked to give the same outputs on the same image; then each is timed
run by run, alternating, with one thread count for all.
"""

import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

from .nanodet_runtime import CONFIGS, nanodet_source
from .reports import machine, write_report

__all__ = ["export_nanodet_own", "export_gfl_d2", "time_sessions", "render", "write"]

_MEAN = np.array([103.53, 116.28, 123.675], np.float32)[:, None, None]
_STD = np.array([57.375, 57.12, 58.395], np.float32)[:, None, None]

# run in the side environment's Python: NanoDet's model, its .pth, its own export script
_NANODET_EXPORT = """
import functools, os, sys, runpy, torch
sys.path.insert(0, {tools!r})
# the script was written for torch < 2 and its TorchScript-based exporter, torch 2.x's dynamo=False
torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)
from gfl_studies.nanodet_runtime import build_nanodet, import_nanodet
model, cfg = build_nanodet({config!r})
torch.manual_seed({seed})
torch.save({{"state_dict": model.state_dict()}}, {pth!r})
sys.argv = ["export_onnx.py", "--cfg_path", os.path.join({src!r}, "config", {config!r}),
            "--model_path", {pth!r}, "--out_path", {onnx!r}, "--input_shape", {shape!r}]
runpy.run_path(os.path.join({src!r}, "tools", "export_onnx.py"), run_name="__main__")
"""


def export_nanodet_own(python: str, name: str, size: int, workdir: str, seed: int = 0) -> Dict:
    """NanoDet's model ``name`` (a key of CONFIGS) saved and exported by NanoDet's own script."""
    src = nanodet_source()
    if src is None:
        raise RuntimeError("set NANODET_SRC to a NanoDet source tree")
    config = CONFIGS[name][0]
    pth, onnx = (os.path.join(workdir, f"nanodet_{size}.{ext}") for ext in ("pth", "onnx"))
    tools = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _NANODET_EXPORT.format(
        tools=tools, config=config, seed=seed, pth=pth, src=src, onnx=onnx, shape=f"{size},{size}"
    )
    env = dict(os.environ, NANODET_SRC=src)
    done = subprocess.run(
        [python, "-c", code], cwd=workdir, env=env, capture_output=True, text=True
    )
    if done.returncode != 0 or not os.path.exists(onnx):
        log = done.stdout[-2000:] + "\n" + done.stderr[-3000:]
        raise RuntimeError(f"NanoDet's export failed:\n{log}")
    return dict(pth=pth, onnx=onnx)


def export_gfl_d2(pth: str, size: int, workdir: str, calibration: Sequence[np.ndarray]) -> Dict:
    """NanoDet's ``.pth`` converted, exported (raw outputs) and quantised by gfl-d2."""
    import torch
    from detectron2.config import LazyConfig, instantiate

    from gfl_d2.convert_nanodet import convert_nanodet_state_dict
    from gfl_d2.export_raw import export_raw_onnx
    from gfl_d2.quantize import quantize_onnx

    weights, info = convert_nanodet_state_dict(torch.load(pth, map_location="cpu")["state_dict"])
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = LazyConfig.load(os.path.join(repo, "configs", info["config"].format(size)))
    if "aux_head" in cfg.model:
        cfg.model.aux_head = None  # training only
    model = instantiate(cfg.model).eval()
    model.load_state_dict(weights, strict=True)
    out = os.path.join(workdir, f"gfl_d2_{size}")
    path, _ = export_raw_onnx(model, torch.from_numpy(calibration[0][0]), out)
    int8 = os.path.join(out, "model_raw_int8.onnx")
    quantize_onnx(path, int8, calibration)
    return dict(fp32=path, int8=int8)


def same_outputs(nanodet_onnx: str, gfl_onnx: str, image: np.ndarray) -> float:
    """Largest difference of the two fp32 graphs' outputs on ``image`` (1, 3, H, W), 0-255 BGR."""
    import onnxruntime as ort

    theirs = ort.InferenceSession(nanodet_onnx, providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(gfl_onnx, providers=["CPUExecutionProvider"])
    a = theirs.run(None, {theirs.get_inputs()[0].name: (image - _MEAN) / _STD})[0]
    b = ours.run(None, {"images": image})[0]
    if a.shape != b.shape:
        raise RuntimeError(f"outputs of shapes {a.shape} (NanoDet) and {b.shape} (gfl-d2)")
    return float(np.abs(a - b).max())


def time_sessions(paths: Dict[str, str], image: np.ndarray, threads: int, runs: int) -> Dict:
    """
    Median milliseconds of one batch-1 run per model, the models alternating
    run by run after 10 warm-up runs each; ``threads`` intra-op threads each.
    """
    import onnxruntime as ort

    sessions, feeds = {}, {}
    for name, path in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions[name] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        x = image if "NanoDet's" not in name else (image - _MEAN) / _STD
        feeds[name] = {sessions[name].get_inputs()[0].name: x.astype(np.float32)}
    for name, s in sessions.items():
        for _ in range(10):
            s.run(None, feeds[name])
    times: Dict[str, List[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[name])
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: dict(median_ms=statistics.median(t), runs=len(t)) for name, t in times.items()}


def render(data: Dict) -> str:
    m = data["machine"]
    lines = [
        f"NanoDet-Plus-m, batch 1, ONNX Runtime {data['onnxruntime']} on the CPU, "
        f"{data['threads']} intra-op threads, median of {data['runs']} runs per model, the "
        f"models alternating run by run; {m['device']}, {m['date']}. NanoDet's export: its own "
        "`tools/export_onnx.py` (opset 11, static shape, onnxsim) on its normalised input; "
        "gfl-d2's: `--outputs raw` (dynamic batch and size, normalisation inside), and its INT8 "
        "quantisation (QDQ, the head's output convolutions and what follows in float).",
        "",
        "| size | NanoDet's export fp32 (ms) | gfl-d2 fp32 (ms) | gfl-d2 INT8 (ms) | "
        "gfl-d2 / NanoDet fp32 | INT8 speed-up | outputs max diff | load before |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["sizes"]:
        t = r["timing"]
        own, ours, int8 = (t[k]["median_ms"] for k in ("NanoDet's export", "gfl-d2", "gfl-d2 INT8"))
        load = f"{r['load_before']:.2f}" if "load_before" in r else "–"
        lines.append(
            f"| {r['size']} | {own:.2f} | {ours:.2f} | {int8:.2f} | {ours / own:.2f} | "
            f"{ours / int8:.2f}x | {r['max_diff']:.1e} | {load} |"
        )
    lines += [
        "",
        "Targets: gfl-d2's fp32 at most NanoDet's own export's latency; INT8 at least 1.5x "
        "faster than fp32 (its AP cost: the INT8 AP study). Load before: the 1-minute load "
        "average as the timing started (2 cores: above 2 means other processes took time).",
    ]
    return "\n".join(lines) + "\n"


def write(results: str, name: str, sizes: List[Dict], threads: int, runs: int) -> str:
    import onnxruntime

    data = dict(
        machine=machine("cpu"),
        onnxruntime=onnxruntime.__version__,
        python=sys.version.split()[0],
        threads=threads,
        runs=runs,
        sizes=sizes,
    )
    return write_report(results, name, data, render)
