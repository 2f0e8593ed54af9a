"""
Latency of gfl-d2's exported NanoDet-Plus against NanoDet's own export of the
same weights, in ONNX Runtime on this machine's CPU (``tools/edge_benchmark.py``
is the command line), fp32 and INT8, with the graphs' op counts; optionally the
INT8 AP cost of a trained model (:func:`gfl_studies.int8_study.study`).

NanoDet's side runs in a side environment (:mod:`gfl_studies.nanodet_runtime`:
a NanoDet source tree, Lightning stood in for, ``onnxsim`` installed there):
its model built from its own config, saved as its ``.pth``, exported by its
own ``tools/export_onnx.py`` (opset 11, static 1x3xHxW, simplified). gfl-d2's
side converts that file with the library's converter and exports the raw and
the decoded outputs (dynamic batch, height and width; the normalisation
inside), then quantises them to INT8 (:mod:`gfl_d2.quantize`); NanoDet's
export is quantised the same way. The raw graphs are first checked to give
the same outputs on the same image; then every graph is timed run by run,
alternating block by block, with one thread count for all.
"""

import os
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, Sequence

import numpy as np

from .nanodet_runtime import CONFIGS, nanodet_source
from .onnx_timing import describe, median_latency
from .reports import machine, write_report

__all__ = [
    "quantisation", "export_nanodet_own", "export_gfl_d2", "quantize_nanodet_own", "same_outputs",
    "time_sessions", "repeated_timing", "graph_ops", "op_times", "render", "write", "NANODET",
    "GFL_D2",
]  # fmt: skip

_MEAN = np.array([103.53, 116.28, 123.675], np.float32)[:, None, None]
_STD = np.array([57.375, 57.12, 58.395], np.float32)[:, None, None]
NANODET, GFL_D2 = "NanoDet's export", "gfl-d2 raw"  # the two fp32 graphs compared

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
    """
    NanoDet's ``.pth`` converted by gfl-d2, exported (raw and decoded outputs)
    and quantised; graph name -> path.
    """
    import torch
    from detectron2.config import LazyConfig, instantiate

    from gfl_d2.convert_nanodet import convert_nanodet_state_dict
    from gfl_d2.export_raw import export_dense_onnx
    from gfl_d2.quantize import quantize_onnx

    weights, info = convert_nanodet_state_dict(torch.load(pth, map_location="cpu")["state_dict"])
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = LazyConfig.load(os.path.join(repo, "configs", info["config"].format(size)))
    if "aux_head" in cfg.model:
        cfg.model.aux_head = None  # training only
    model = instantiate(cfg.model).eval()
    model.load_state_dict(weights, strict=True)
    paths = {}
    for outputs in ("raw", "decoded"):
        out = os.path.join(workdir, f"gfl_d2_{size}_{outputs}")
        path, _ = export_dense_onnx(model, torch.from_numpy(calibration[0][0]), out, outputs)
        paths[f"gfl-d2 {outputs}"] = path
        paths[f"gfl-d2 {outputs}, INT8"] = os.path.join(out, f"model_{outputs}_int8.onnx")
        quantize_onnx(path, paths[f"gfl-d2 {outputs}, INT8"], calibration)
    return paths


def quantize_nanodet_own(path: str, calibration: Sequence[np.ndarray]) -> str:
    """NanoDet's export quantised as gfl-d2's (on its normalised input); the INT8 file."""
    from gfl_d2.quantize import quantize_onnx

    int8 = os.path.splitext(path)[0] + "_int8.onnx"
    quantize_onnx(path, int8, [(x - _MEAN) / _STD for x in calibration])
    return int8


def _feed(session, name: str, image: np.ndarray) -> Dict[str, np.ndarray]:
    """NanoDet's graphs take the normalised image; gfl-d2's normalise it themselves."""
    x = (image - _MEAN) / _STD if name.startswith(NANODET) else image
    return {session.get_inputs()[0].name: x.astype(np.float32)}


def same_outputs(nanodet_onnx: str, gfl_onnx: str, image: np.ndarray) -> float:
    """Largest difference of the two fp32 graphs' outputs on ``image`` (1, 3, H, W), 0-255 BGR."""
    import onnxruntime as ort

    theirs, ours = (
        ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        for p in (nanodet_onnx, gfl_onnx)
    )
    a = theirs.run(None, _feed(theirs, NANODET, image))[0]
    b = ours.run(None, _feed(ours, GFL_D2, image))[0]
    if a.shape != b.shape:
        raise RuntimeError(f"outputs of shapes {a.shape} (NanoDet) and {b.shape} (gfl-d2)")
    return float(np.abs(a - b).max())


def time_sessions(paths: Dict[str, str], image: np.ndarray, threads: int, runs: int) -> Dict:
    """
    Median milliseconds of one batch-1 run per graph (:func:`median_latency`:
    blocks of consecutive runs, alternating), ``threads`` intra-op threads each.
    """
    import onnxruntime as ort

    sessions, feeds = {}, {}
    for name, path in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions[name] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feeds[name] = _feed(sessions[name], name, image)
    return median_latency(sessions, feeds, runs)


def repeated_timing(
    paths: Dict[str, str], image: np.ndarray, threads: int, runs: int, repeats: int
) -> Dict:
    """
    :func:`time_sessions` ``repeats`` times, with new sessions each time (on a
    2-core virtual machine the ratio of two graphs' medians changed from one
    set of sessions to the next by up to 15%, and the speed of all of them
    by 40%): per graph, ``median_ms`` (the median of the repeats' medians),
    ``repeats_ms`` (each repeat's median, for the ratios repeat by repeat),
    ``runs``, ``block``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    each = [time_sessions(paths, image, threads, runs) for _ in range(repeats)]
    return {
        name: dict(
            each[0][name],
            median_ms=float(np.median([e[name]["median_ms"] for e in each])),
            repeats_ms=[e[name]["median_ms"] for e in each],
        )
        for name in paths
    }


def graph_ops(paths: Dict[str, str], workdir: str) -> Dict[str, Dict]:
    """Per fp32 graph, its op counts as written and as ONNX Runtime runs them on this CPU."""
    from gfl_d2.onnx_graph import op_counts, runtime_op_counts

    return {
        name: dict(
            written=op_counts(path),
            runtime=runtime_op_counts(path, os.path.join(workdir, f"{i}.optimized.onnx")),
        )
        for i, (name, path) in enumerate(paths.items())
        if "INT8" not in name
    }


def _conv_kinds(optimized: str) -> Dict[str, str]:
    """Node name -> "1x1", "depthwise kxk" or "kxk" for the convolutions of an ONNX file."""
    import onnx

    kinds = {}
    for node in onnx.load(optimized).graph.node:
        if "Conv" in node.op_type:
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            k = a.get("kernel_shape", [0])[0]
            kinds[node.name] = f"{'depthwise ' if a.get('group', 1) > 1 else ''}{k}x{k}"
    return kinds


def op_times(path: str, name: str, image: np.ndarray, threads: int, runs: int) -> Dict:
    """
    Milliseconds per op type of one batch-1 run (convolutions by kind), from
    ONNX Runtime's profiler: each node's fastest of ``runs`` runs (robust to a
    load on the machine), summed by type.
    """
    import json

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.enable_profiling = threads, True
    so.optimized_model_filepath = os.path.splitext(path)[0] + ".profiled.onnx"
    so.profile_file_prefix = os.path.splitext(path)[0] + "_profile"
    so.log_severity_level = 3
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = _feed(session, name, image)
    for _ in range(runs):
        session.run(None, feed)
    with open(session.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node"]
    kinds, fastest = _conv_kinds(so.optimized_model_filepath), {}
    for e in events:
        if e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            key = (node, e["args"]["op_name"])
            fastest[key] = min(fastest.get(key, float("inf")), e["dur"] / 1e3)
    times: Dict[str, float] = {}
    for (node, op), ms in fastest.items():
        label = f"{op} {kinds[node]}" if node in kinds else op
        times[label] = times.get(label, 0.0) + ms
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def _fp32_of(name: str) -> str:
    """The fp32 graph an INT8 graph was quantised from (older reports: "gfl-d2 INT8")."""
    return name.replace(", INT8", "").replace(" INT8", "")


def _ratios(t: Dict, name: str, base: str) -> List[float]:
    """``t[name]``'s time over ``t[base]``'s, repeat by repeat (one ratio without repeats)."""
    a, b = (t[k].get("repeats_ms", [t[k]["median_ms"]]) for k in (name, base))
    return [x / y for x, y in zip(a, b)]


def _with_range(values: List[float], suffix: str = "") -> str:
    """
    The median of ``values`` (each repeat's ratio: a drift of the machine's speed
    between repeats cancels in it), and their range where there were several.
    """
    text = f"{statistics.median(values):.2f}{suffix}"
    if len(values) > 1:
        text += f" ({min(values):.2f}-{max(values):.2f}{suffix})"
    return text


def _latency_rows(r: Dict) -> List[str]:
    t = r["timing"]
    rows = []
    for name, v in t.items():
        speedup = ""
        if "INT8" in name:
            speedup = _with_range([1 / x for x in _ratios(t, name, _fp32_of(name))], "x")
        rows.append(
            f"| {r['size']} | {name} | {v['median_ms']:.2f} | "
            f"{_with_range(_ratios(t, name, NANODET))} | {speedup} |"
        )
    return rows


def _verdict(values: List[float], ok: Callable[[float], bool], suffix: str) -> str:
    """
    "met" or "missed" where every repeat's value agrees, else that the target
    lies within the repeats' spread; with the values' median and range.
    """
    shown = f"{statistics.median(values):.2f}{suffix}"
    if len(values) > 1:
        shown += f"; repeats {min(values):.2f}{suffix} to {max(values):.2f}{suffix}"
    if all(ok(x) for x in values):
        return f"met ({shown})"
    if not any(ok(x) for x in values):
        return f"missed ({shown})"
    return f"within the spread of the repeats ({shown})"


def _verdicts(sizes: List[Dict]) -> List[str]:
    """The targets, size by size: fp32 at most NanoDet's own; INT8 1.5x faster than fp32."""
    ours = GFL_D2 if GFL_D2 in sizes[0]["timing"] else "gfl-d2"
    lines = []
    for r in sizes:
        t = r["timing"]
        int8 = next(k for k in t if k.startswith(ours) and "INT8" in k)
        fp32 = _verdict(_ratios(t, ours, NANODET), lambda x: x <= 1, "x")
        gain = _verdict([1 / x for x in _ratios(t, int8, ours)], lambda x: x >= 1.5, "x")
        lines.append(
            f"- {r['size']}: gfl-d2's fp32 at most NanoDet's own export's latency: {fp32}; "
            f"INT8 at least 1.5x faster than fp32: {gain}."
        )
    return lines


def _ops_rows(ops: Dict[str, Dict]) -> List[str]:
    rows = []
    for name, o in ops.items():
        top = ", ".join(f"{k} {v}" for k, v in list(o["runtime"].items())[:9])
        rows.append(
            f"| {name} | {sum(o['written'].values())} | {sum(o['runtime'].values())} | {top} |"
        )
    return rows


# what the first reports' INT8 was, before quantisation settings were recorded
_FULL_RANGE = (
    "`gfl_d2.quantize` (QDQ, uint8 activations, per-channel int8 weights over the full 8-bit "
    "range, the head's output convolutions and what follows in float)"
)


def quantisation(calibration: int) -> str:
    """How the INT8 graphs of a report were made, for its header."""
    from gfl_d2.quantize import REDUCE_RANGE

    bits = "7-bit" if REDUCE_RANGE else "8-bit"
    return (
        f"`gfl_d2.quantize` (QDQ, uint8 activations, per-channel {bits} int8 weights, the "
        "head's output convolutions and all after them in float, ranges from "
        f"{calibration} training images of the shapes dataset); NanoDet's export quantised the "
        "same way"
    )


def _exports(data: Dict) -> str:
    graphs = data["sizes"][0]["timing"]
    outputs = [o for o in ("raw", "decoded") if f"gfl-d2 {o}" in graphs] or ["raw"]
    return " and ".join(f"`--outputs {o}`" for o in outputs)


_PROFILE_NOTE = (
    "Milliseconds per op type in one batch-1 run at the last size, from ONNX Runtime's "
    "profiler: each node's fastest of the profiled runs, summed by type (convolutions by "
    "kernel; QLinear: INT8 kernels; Reorder / Transpose: layout changes). The sums leave out "
    "the time between nodes. INT8 pays where a convolution's arithmetic dominates (the 1x1 "
    "ones); a depthwise convolution or a 3-channel one gains little or loses, and the "
    "activations, a LeakyReLU that no INT8 convolution fuses, become lookups of their own."
)


def _profile_rows(profile: Dict[str, Dict[str, float]]) -> List[str]:
    graphs = list(profile)
    ops = sorted({op for p in profile.values() for op in p}, key=lambda op: -max(
        p.get(op, 0.0) for p in profile.values()))  # fmt: skip
    rows = ["| op | " + " | ".join(graphs) + " |", "|---|" + "---:|" * len(graphs)]
    for op in ops[:14]:
        rows.append(
            f"| {op} | " + " | ".join(f"{profile[g].get(op, 0.0):.2f}" for g in graphs) + " |"
        )
    rest = [sum(v for op, v in profile[g].items() if op not in ops[:14]) for g in graphs]
    rows.append("| other | " + " | ".join(f"{r:.2f}" for r in rest) + " |")
    rows.append("| sum | " + " | ".join(f"{sum(profile[g].values()):.2f}" for g in graphs) + " |")
    return rows


_GRAPHS_NOTE = (
    "NanoDet's graph has static shapes, simplified by onnxsim, and takes the normalised image; "
    "its channel shuffle is Reshape-Transpose-Reshape and its channel split Slices. gfl-d2's "
    "has a dynamic batch, height and width and normalises the 0-255 image itself (a Sub; the "
    "division by the std is folded into the first convolution's weights); its shuffle is one "
    "Gather by a constant order, its split one Split of constant sizes, BatchNorm is folded "
    "into the convolutions by the exporter, and the only shape arithmetic left is the "
    "per-level flattening of the head's outputs (a few Shape nodes on 1-D shapes). ONNX "
    "Runtime runs the convolutions of both in its blocked NCHWc layout, with a Reorder "
    "wherever an op it cannot run in that layout (Split, Slice, Gather, Transpose) reads or "
    "writes their tensors; the decoded graph adds the points, the DFL softmax and integral "
    "(one Softmax and one MatMul over all levels) and the clipping."
)


def _timing(data: Dict) -> str:
    """How the runs were timed."""
    return describe(next(iter(data["sizes"][0]["timing"].values())).get("block"))


def _repeats(data: Dict) -> str:
    """How often the timing was repeated with new sessions, for the header."""
    n = data.get("repeats", 1)
    if n == 1:
        return ""
    return (
        f"; all of it repeated {n} times with new sessions: a graph's median is the repeats' "
        "median; a ratio is the median of the repeats' ratios (a drift of the machine's speed "
        "between repeats cancels in each), in brackets their lowest and highest"
    )


def render(data: Dict) -> str:
    m = data["machine"]
    lines = [
        "# NanoDet-Plus-m exported by gfl-d2 and by NanoDet",
        "",
        f"Batch 1, ONNX Runtime {data['onnxruntime']} on the CPU, {data['threads']} intra-op "
        f"threads, median of {data['runs']} runs per graph, {_timing(data)}{_repeats(data)}; "
        f"{m['device']}, {m['date']}. The same random weights: "
        "NanoDet's model from its own config, exported by its own `tools/export_onnx.py` (opset "
        "11, static shape, onnxsim) and run on its normalised input; converted into gfl-d2 by "
        f"the library's converter, exported with {_exports(data)} (dynamic batch and size, the "
        f"normalisation inside). INT8: {data.get('quantisation', _FULL_RANGE)}. Written by "
        "`tools/edge_benchmark.py`.",
        "",
        "| size | graph | median (ms) | / NanoDet's export fp32 | INT8 speed-up |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in data["sizes"]:
        lines += _latency_rows(r)
    loads = ", ".join(
        f"{r['size']}: {r['load_before']:.2f}" for r in data["sizes"] if "load_before" in r
    )
    diffs = ", ".join(f"{r['size']}: {r['max_diff']:.1e}" for r in data["sizes"])
    lines += [
        "",
        f"Largest difference of the raw outputs of the two fp32 graphs on one image: {diffs}. "
        + (f"1-minute load average as each size's timing began: {loads} (above the number of "
           "cores: other processes took time)." if loads else ""),
        "",
        "Targets:",
        *_verdicts(data["sizes"]),
    ]  # fmt: skip
    if "ops" in data:
        lines += ["", "## The graphs", "",
                  "| graph | nodes written | nodes ONNX Runtime runs | most frequent, as run |",
                  "|---|---:|---:|---|", *_ops_rows(data["ops"]), "", _GRAPHS_NOTE]  # fmt: skip
    if "profile" in data:
        lines += ["", "## Where the time goes", "", *_profile_rows(data["profile"]), "",
                  _PROFILE_NOTE]  # fmt: skip
    if "ap" in data:
        from .int8_study import render_table

        a = data["ap"]
        lines += [
            "", "## INT8's AP cost", "",
            f"`{a['config']}` with `{a['weights']}`: raw-output export, decoded by "
            f"`gfl_d2.edge_decoder`, evaluated on {a['test_images']} test images; INT8 ranges "
            f"from {a['calibration_images']} training images; weights {a['weight_bits']}. "
            f"Latency: batch 1 at the config's test size, median of {a['runs']} runs.",
            "", *render_table(a), "", "Target: at most 1 AP lost.",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


def write(results: str, name: str, data: Dict) -> str:
    """``data`` (sizes, threads, runs; ops, ap) with the machine's description, as a report."""
    import onnxruntime

    data = dict(
        data, machine=machine("cpu"), onnxruntime=onnxruntime.__version__,
        python=sys.version.split()[0],
    )  # fmt: skip
    return write_report(results, name, data, render)
