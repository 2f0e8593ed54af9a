"""
GFL's CPU inference throughput as a fraction of the machine's own convolution
throughput, both measured in one run (``tools/cpu_throughput.py``):

* the machine: a 3x3 256->256 convolution at the size of the head's largest
  level (1x256x100x152 for an 800x1216 image), eager in contiguous and
  channels-last layout and frozen for oneDNN; the best is the reference;
* the model: its multiply-accumulates counted by fvcore on the backbone and
  head (convolutions, normalisations, upsampling), then GFLOP/s = 2 x GMAC /
  seconds of each inference path (image tensor to head outputs; decoding and
  NMS are timed apart), the paths run round-robin so that a load on the
  machine weighs on all alike;
* where the time goes: a profile of the best float32 path by kind of operator,
  and the model's convolutions each timed alone (the ceiling of any path that
  runs them one after the other);
* bfloat16: measured where the CPU has bfloat16 arithmetic, else the
  library's refusal; with a trained checkpoint, its AP in float32 and bfloat16.

Every time is a median of ``repeat`` runs after ``warmup``, wall clock; the
process's CPU time beside it shows how busy the machine was (CPU time /
(wall x threads) well below 1: other processes took the cores).
"""

import copy
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from gfl_d2.cpu_features import describe_cpu, native_bf16_flags, require_native_bf16
from gfl_d2.cpu_fused import FusedCPUInference
from gfl_d2.cpu_inference import FrozenCPUInference
from gfl_d2.errors import UsageError

from .benchmark import build_model
from .reports import machine

# the count for GFL R-50-FPN at 800x1216 (GMAC)
KNOWN_GMAC = 198.0
REFERENCE = "conv 3x3 256->256"


# ------------------------------------------------------------------ timing
def _frozen_module(module: nn.Module, example: torch.Tensor):
    """``module`` traced, frozen and optimised for oneDNN inference (as FrozenCPUInference)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation warnings
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def interleaved(fns: Dict[str, Callable], repeat: int, warmup: int) -> Dict[str, Dict]:
    """
    Wall and CPU seconds of each of ``fns``, run round-robin ``repeat`` times after
    ``warmup`` rounds: per name the median, min and max wall time and the median CPU time.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {n: [] for n in fns}
    cpu = {n: [] for n in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    return {
        n: dict(
            seconds=statistics.median(wall[n]),
            min=min(wall[n]),
            max=max(wall[n]),
            cpu_seconds=statistics.median(cpu[n]),
        )
        for n in fns
    }


# ------------------------------------------------------------------ the machine's convolution
def reference_convs(size: Tuple[int, int], calls: int = 3) -> Tuple[Dict[str, Callable], float]:
    """
    The reference convolution in each layout, ``calls`` times per run: {name: fn} and the
    GMAC of one run.
    """
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 256, *size)
    cl_conv = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    frozen = _frozen_module(conv, x)

    def repeated(fn, arg):
        return lambda: [fn(arg) for _ in range(calls)]

    fns = {
        f"{REFERENCE}, contiguous": repeated(conv, x),
        f"{REFERENCE}, channels-last": repeated(cl_conv, x_cl),
        f"{REFERENCE}, frozen (oneDNN)": repeated(frozen, x),
    }
    return fns, calls * 256 * 256 * 9 * size[0] * size[1] / 1e9


# ------------------------------------------------------------------ the model
class BackboneAndHead(nn.Module):
    """(N, 3, H, W) normalised images -> the head's outputs, flat: what every path computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.head, self.in_features = (
            model.backbone,
            model.head,
            model.head_in_features,
        )

    def forward(self, x):
        features = self.backbone(x)
        return tuple(t for kind in self.head([features[f] for f in self.in_features]) for t in kind)


def count_macs(model: nn.Module, images: torch.Tensor) -> Dict:
    """
    The backbone and head's multiply-accumulates by fvcore (one per MAC for convolutions;
    normalisation and upsampling per element): total GMAC and GMAC by operator.
    """
    from fvcore.nn import FlopCountAnalysis

    with torch.no_grad():
        count = FlopCountAnalysis(BackboneAndHead(model).eval(), images)
        count.unsupported_ops_warnings(False)
        count.uncalled_modules_warnings(False)
        by_op = {k: v / 1e9 for k, v in count.by_operator().items()}
        total = count.total() / 1e9
        uncounted = sorted(count.unsupported_ops())
    return dict(gmac=total, by_operator=by_op, uncounted=uncounted)


def fp32_paths(model: nn.Module, images: torch.Tensor, inductor: bool) -> Dict[str, Callable]:
    """
    The float32 inference paths, image tensor to head outputs: eager and frozen
    (``cpu_inference="frozen"``), each with contiguous and channels-last weights and input;
    fused (``cpu_inference="fused"``, channels-last); with ``inductor``, ``torch.compile``
    with freezing (compiled here, which takes minutes).
    """
    unit = BackboneAndHead(model).eval()
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    cl_unit = BackboneAndHead(cl_model).eval()
    cl_images = images.contiguous(memory_format=torch.channels_last)
    frozen = FrozenCPUInference(model.backbone, model.head, model.head_in_features)
    cl_frozen = FrozenCPUInference(cl_model.backbone, cl_model.head, cl_model.head_in_features)
    fused = FusedCPUInference(model.backbone, model.head, model.head_in_features)
    fns = {
        "eager": lambda: unit(images),
        "eager, channels-last": lambda: cl_unit(cl_images),
        "frozen": lambda: frozen(images),
        "frozen, channels-last": lambda: cl_frozen(cl_images),
        "fused (channels-last)": lambda: fused(images),
    }
    if inductor:
        from torch._inductor import config as inductor_config

        with inductor_config.patch(freezing=True):
            compiled = torch.compile(unit)
            compiled(images)  # compiles now, not in the first timed run
        fns["inductor (torch.compile, freezing)"] = lambda: compiled(images)
    return fns


def bf16_paths(model: nn.Module, images: torch.Tensor) -> Dict[str, Callable]:
    """bfloat16 inference as ``cpu_inference="bf16"`` runs it, contiguous and channels-last."""
    unit = BackboneAndHead(model).eval()
    cl_unit = BackboneAndHead(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
    cl_images = images.contiguous(memory_format=torch.channels_last)

    def autocast(fn, x):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x)

        return run

    return {
        "bf16 autocast": autocast(unit, images),
        "bf16 autocast, channels-last": autocast(cl_unit, cl_images),
    }


# ------------------------------------------------------------------ around the network
def _decode(model: nn.Module, images, features, predictions) -> int:
    """Decoding, NMS and detectron2's postprocess of one image's outputs; the detections."""
    from detectron2.modeling.postprocessing import detector_postprocess

    (result,) = model.forward_inference(images, features, predictions)
    return len(detector_postprocess(result, *images.image_sizes[0]))


def pre_and_post(model: nn.Module, image: torch.Tensor, repeat: int) -> Dict:
    """
    Seconds of normalisation and padding, and of decoding + NMS at two loads: the
    config's initialisation (scores about 0.01: few pass the 0.05 threshold) and every
    score near 0.5 (each level gives its top-k candidates: the most work NMS can get).
    """
    inputs = [{"image": image}]
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    logits, *rest = model.head(features)
    offset = -min(t.mean().item() for t in logits)  # moves the scores to about 0.5
    crowded = [[t + offset for t in logits], *rest]
    fns = {
        "normalise and pad": lambda: model.preprocess_image(inputs),
        "decode + NMS, initial scores": lambda: _decode(model, images, features, [logits, *rest]),
        "decode + NMS, every score ~0.5": lambda: _decode(model, images, features, crowded),
    }
    times = interleaved(fns, repeat, warmup=1)
    times["decode + NMS, initial scores"]["detections"] = fns["decode + NMS, initial scores"]()
    times["decode + NMS, every score ~0.5"]["detections"] = fns["decode + NMS, every score ~0.5"]()
    return times


# ------------------------------------------------------------------ where the time goes
# operator name fragments -> kind; the first match wins
KINDS = [
    ("convolution", ("conv",)),
    ("normalisation", ("norm",)),
    ("activation", ("relu", "clamp", "sigmoid")),
    ("layout conversion", ("to_mkldnn", "to_dense", "copy_", "contiguous", "clone")),
    ("addition, multiplication", ("add", "mul", "sub", "div")),
    ("pooling, upsampling", ("pool", "upsample")),
]
# a TorchScript graph's own time: its oneDNN convolutions (prim::mkldnn_convolution) are not
# profiled operators
GRAPH_OWN = "forward"


def profile_breakdown(fn: Callable) -> Dict[str, float]:
    """Seconds of one run of ``fn`` by kind of operator (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    seconds: Dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, parts in KINDS if any(p in name for p in parts)), "other")
        if event.key == GRAPH_OWN:
            kind = "convolution (inside the frozen graph)"
        seconds[kind] = seconds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def conv_calls(model: nn.Module, images: torch.Tensor) -> Dict[Tuple, int]:
    """Every convolution of the backbone and head: {(input shape, weight shape, stride, padding,
    dilation, groups): calls}."""
    calls: Dict[Tuple, int] = {}

    def record(conv, args):
        key = (
            tuple(args[0].shape), tuple(conv.weight.shape), conv.stride, conv.padding,
            conv.dilation, conv.groups,
        )  # fmt: skip
        calls[key] = calls.get(key, 0) + 1

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    try:
        BackboneAndHead(model).eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _conv_kind(key: Tuple) -> str:
    (_, cin, _, _), (cout, _, kh, kw), stride = key[0], key[1], key[2]
    if (kh, cin, cout) == (3, 256, 256) and stride == (1, 1):
        return "3x3 256->256 (FPN outputs, head towers)"
    return f"{kh}x{kw} stride {stride[0]}"


def conv_floor(model: nn.Module, images: torch.Tensor, repeat: int) -> Dict:
    """
    Every convolution of the model alone (frozen for oneDNN and eager channels-last, the
    faster), times its calls: seconds and GMAC by kind, the ceiling of any path that runs
    them one after another.
    """
    kinds: Dict[str, Dict[str, float]] = {}
    for key, count in conv_calls(model, images).items():
        shape, (cout, cin_g, kh, kw), stride, padding, dilation, groups = key
        conv = nn.Conv2d(
            cin_g * groups, cout, (kh, kw), stride, padding, dilation, groups, bias=False
        ).eval()
        x = torch.randn(shape)
        frozen = _frozen_module(conv, x)
        cl_conv, x_cl = (
            conv.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
        t = interleaved({"frozen": lambda: frozen(x), "cl": lambda: cl_conv(x_cl)}, repeat, 2)
        with torch.no_grad():
            outputs = conv(x).numel()
        gmac = count * outputs * cin_g * kh * kw / 1e9
        kind = kinds.setdefault(_conv_kind(key), dict(gmac=0.0, seconds=0.0, calls=0))
        kind["gmac"] += gmac
        kind["seconds"] += count * min(t["frozen"]["seconds"], t["cl"]["seconds"])
        kind["calls"] += count
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]["seconds"]))


# ------------------------------------------------------------------ bfloat16
def bf16_status(force: bool) -> Dict:
    """Whether bfloat16 is measured: the CPU's bfloat16 flags, or the library's refusal."""
    native = native_bf16_flags()
    if native:
        return dict(native=native, measured=True)
    try:
        require_native_bf16(what="cpu_inference='bf16' (bfloat16 inference)")
    except UsageError as e:
        return dict(native=[], measured=force, refusal=str(e), forced=force)
    return dict(native=[], measured=force)


def ap_fp32_vs_bf16(config: str, checkpoint: str, allow_emulated: bool) -> Dict:
    """
    COCO metrics of a trained model on its config's test set, float32 (frozen) against
    bfloat16 (``cpu_inference="bf16"``; ``allow_emulated``: also where emulated).
    """
    import os

    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset

    from gfl_d2.checkpoint import load_trained_weights
    from gfl_d2.cpu_inference import for_cpu_inference
    from gfl_d2.evaluation import use_fast_cocoeval
    from gfl_d2.lazy_config import load_lazy_config
    from gfl_d2.model_zoo import get_config_file

    cfg = load_lazy_config(config if os.path.isfile(config) else get_config_file(config))
    model = instantiate(cfg.model).eval()
    load_trained_weights(model, checkpoint, how="--checkpoint /path/to/model.pth")
    use_fast_cocoeval()
    metrics = {}
    for mode in ("frozen", "bf16"):
        wrapped = for_cpu_inference(model, mode, allow_emulated_bf16=allow_emulated).eval()
        results = inference_on_dataset(
            wrapped, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
        )
        metrics[mode] = {k: float(v) for k, v in results["bbox"].items()}
    return dict(
        config=config, checkpoint=checkpoint, metrics=metrics,
        ap_lost=metrics["frozen"]["AP"] - metrics["bf16"]["AP"],
    )  # fmt: skip


# ------------------------------------------------------------------ the run
def _rows(times: Dict[str, Dict], gmac: Dict[str, float], threads: int) -> Dict[str, Dict]:
    """Each timed line with its GMAC, GFLOP/s and CPU share (CPU time / (wall x threads))."""
    return {
        name: dict(
            t,
            gmac=gmac[name],
            gflops=2 * gmac[name] / t["seconds"],
            cpu_share=t["cpu_seconds"] / (t["seconds"] * threads),
            cpu_gflops=2 * gmac[name] * threads / t["cpu_seconds"],
        )  # fmt: skip
        for name, t in times.items()
    }


def measure(args, log=print) -> Dict:
    """Everything the report holds (see the module's docstring)."""
    torch.manual_seed(0)
    model = build_model("gfl", "cpu").eval()
    image = torch.rand(3, *args.size, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}]).tensor
    log(f"counting MACs at {tuple(images.shape[-2:])}")
    macs = count_macs(model, images)
    bf16 = bf16_status(args.force_bf16)
    with torch.no_grad():
        refs, ref_gmac = reference_convs(tuple(s // 8 for s in images.shape[-2:]))
        paths = fp32_paths(model, images, args.inductor)
        if bf16["measured"]:
            paths.update(bf16_paths(model, images))
        log(f"timing {len(refs)} reference convolutions and {len(paths)} paths, round-robin")
        times = interleaved({**refs, **paths}, args.repeat, args.warmup)
        gmac = {**{n: ref_gmac for n in refs}, **{n: macs["gmac"] for n in paths}}
        rows = _rows(times, gmac, torch.get_num_threads())
        best = max((n for n in paths if not n.startswith("bf16")), key=lambda n: rows[n]["gflops"])
        log(f"profiling {best}; the convolutions alone; decoding")
        profile = profile_breakdown(paths[best])
        floor = conv_floor(model, images, max(3, args.repeat // 2))
        around = pre_and_post(model, image, args.repeat)
    ap = None
    if args.checkpoint and bf16["measured"]:
        log(f"AP of {args.checkpoint}, float32 and bfloat16")
        ap = ap_fp32_vs_bf16(args.config, args.checkpoint, args.force_bf16)
    elif args.checkpoint:
        log("no AP comparison: bfloat16 inference is refused on this CPU (see the report)")
    header = dict(
        machine("cpu"), cpu=describe_cpu(), size=list(args.size),
        padded_size=list(images.shape[-2:]), repeat=args.repeat, warmup=args.warmup,
    )  # fmt: skip
    return dict(
        header=header, macs=macs, known_gmac=KNOWN_GMAC, references=list(refs),
        paths=list(paths), rows=rows, best=best, profile=profile, conv_floor=floor,
        pre_post=around, bf16=bf16, ap=ap, target=args.target,
    )  # fmt: skip


# ------------------------------------------------------------------ the report
def _header(data: Dict) -> List[str]:
    h, cpu = data["header"], data["header"]["cpu"]
    padded = "" if h["padded_size"] == h["size"] else f" (padded to {h['padded_size']})"
    return [
        "# GFL R-50-FPN on the CPU against the machine's own convolution",
        "",
        f"{h['date']}, {cpu['model']} ({cpu['cores']} cores, {cpu['machine']}), torch "
        f"{h['torch']} ({cpu['torch_capability']} kernels), {cpu['threads']} "
        f"thread{'s' if cpu['threads'] != 1 else ''}. CPU flags: "
        f"{', '.join(cpu['flags']) or 'none listed'}; bfloat16 units: "
        f"{', '.join(cpu['native_bf16']) or 'none'}. One {h['size'][0]}x{h['size'][1]} image"
        f"{padded}, batch 1, random weights; median of {h['repeat']} runs after {h['warmup']} "
        "warm-up, the reference convolutions and the paths round-robin. CPU share: the "
        "process's CPU time / (wall time x threads), below 1 where other processes took the "
        "cores. Written by `tools/cpu_throughput.py`.",
    ]


def _reference(data: Dict, key: str = "gflops") -> float:
    return max(data["rows"][n][key] for n in data["references"])


def _timing_table(data: Dict) -> List[str]:
    rows, ref = data["rows"], _reference(data)
    contiguous = rows[data["references"][0]]["gflops"]
    lines = [
        "",
        "| what | seconds (min-max) | GFLOP/s | of the best convolution | of the contiguous "
        "convolution | CPU share | GFLOP/s by CPU time | of the best, by CPU time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cpu_ref = _reference(data, "cpu_gflops")
    for name in data["references"] + data["paths"]:
        r = rows[name]
        lines.append(
            f"| {name} | {r['seconds']:.3f} ({r['min']:.3f}-{r['max']:.3f}) | {r['gflops']:.0f} | "
            f"{r['gflops'] / ref:.0%} | {r['gflops'] / contiguous:.0%} | {r['cpu_share']:.2f} | "
            f"{r['cpu_gflops']:.0f} | {r['cpu_gflops'] / cpu_ref:.0%} |"
        )
    return lines


def _macs(data: Dict) -> List[str]:
    m, h = data["macs"], data["header"]
    ops = ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(m["by_operator"].items(), key=lambda kv: -kv[1])
    )
    return [
        "",
        f"The model: fvcore counts {m['gmac']:.2f} GMAC for the backbone and head at "
        f"{h['padded_size'][0]}x{h['padded_size'][1]} ({ops}; normalisation and upsampling "
        f"per element), against the issue's {data['known_gmac']:.0f}. Not counted (no "
        f"multiply-accumulates): {', '.join(m['uncounted']) or 'nothing'}. A path's GFLOP/s "
        "is 2 x that / its seconds (image tensor to head outputs).",
    ]


def _verdict(data: Dict) -> List[str]:
    rows, best, target = data["rows"], data["best"], data["target"]
    fraction = rows[best]["gflops"] / _reference(data)
    contiguous = rows[best]["gflops"] / rows[data["references"][0]]["gflops"]
    by_cpu = rows[best]["cpu_gflops"] / _reference(data, "cpu_gflops")
    floor = data["conv_floor"].values()
    ceiling = (
        2 * sum(k["gmac"] for k in floor) / sum(k["seconds"] for k in floor) / _reference(data)
    )

    def met(x):
        return "met" if x >= target else "not met"

    return [
        "",
        f"The fastest float32 path, {best}, reaches {fraction:.0%} of the best convolution "
        f"({by_cpu:.0%} by CPU time): the target of {target:.0%} is {met(fraction)} against it; "
        f"against the contiguous convolution (how the issue's 84% was measured) it reaches "
        f"{contiguous:.0%}, {met(contiguous)}. The model's convolutions, each alone, reach "
        f"{ceiling:.0%} of the best convolution (below): the ceiling of any path that runs "
        "them one after another. By CPU time: CPU seconds x threads in place of wall seconds; "
        "on one thread this figure holds however busy the machine is, on several it counts "
        "the threads' waiting as work.",
    ]


def _profile(data: Dict) -> List[str]:
    total = sum(data["profile"].values())
    lines = [
        "",
        f"## Where the time goes: {data['best']}",
        "",
        "One run under torch.profiler (self CPU time; the profiler adds its own).",
        "",
        "| kind of operator | seconds | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {v:.3f} | {v / total:.0%} |" for k, v in data["profile"].items()]
    return lines


def _floor(data: Dict) -> List[str]:
    floor, ref = data["conv_floor"], _reference(data)
    seconds = sum(k["seconds"] for k in floor.values())
    gmac = sum(k["gmac"] for k in floor.values())
    lines = [
        "",
        "## The model's convolutions, each alone",
        "",
        "Each convolution of the backbone and head timed alone on its own input (frozen for "
        "oneDNN or eager channels-last, the faster), times its calls: what a path that runs "
        "them one after another cannot beat.",
        "",
        "| convolutions | calls | GMAC | seconds | GFLOP/s | of the best 3x3 256->256 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, k in floor.items():
        gflops = 2 * k["gmac"] / k["seconds"]
        lines.append(
            f"| {name} | {k['calls']} | {k['gmac']:.1f} | {k['seconds']:.3f} | {gflops:.0f} | "
            f"{gflops / ref:.0%} |"
        )
    lines.append(
        f"| all | {sum(k['calls'] for k in floor.values())} | {gmac:.1f} | {seconds:.3f} | "
        f"{2 * gmac / seconds:.0f} | {2 * gmac / seconds / ref:.0%} |"
    )
    return lines


def _around(data: Dict) -> List[str]:
    lines = ["", "## Around the network", "", "| step | ms | detections |", "|---|---:|---:|"]
    for name, t in data["pre_post"].items():
        lines.append(f"| {name} | {1000 * t['seconds']:.1f} | {t.get('detections', '')} |")
    return lines


def _bf16(data: Dict) -> List[str]:
    b, lines = data["bf16"], ["", "## bfloat16", ""]
    if b.get("refusal"):
        lines += [f"`cpu_inference='bf16'` on this CPU: UsageError: {b['refusal']}"]
    if b["measured"]:
        fp32 = data["rows"][data["best"]]["seconds"]
        for name in (n for n in data["paths"] if n.startswith("bf16")):
            lines.append(
                f"{name}: {fp32 / data['rows'][name]['seconds']:.2f}x the speed of {data['best']}"
                + (" (emulated: forced with --force-bf16)." if b.get("forced") else ".")
            )
    if data.get("ap"):
        ap = data["ap"]
        lines += [
            "",
            f"AP of `{ap['checkpoint']}` ({ap['config']}): float32 "
            f"{ap['metrics']['frozen']['AP']:.2f}, bfloat16 {ap['metrics']['bf16']['AP']:.2f}: "
            f"{ap['ap_lost']:.2f} AP lost.",
        ]
    return lines


def render(data: Dict) -> str:
    lines = _header(data) + _macs(data) + _timing_table(data) + _verdict(data)
    return "\n".join(lines + _profile(data) + _floor(data) + _around(data) + _bf16(data))


def parse_args(argv=None):
    import argparse
    import os

    from .reports import add_report_arguments

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--repeat", type=int, default=5, help="timed runs of every line")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (a frozen graph "
                   "is optimised on its second run)")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--target", type=float, default=0.9, help="fraction of the best convolution")
    p.add_argument("--inductor", action="store_true", help="also torch.compile (minutes)")
    p.add_argument("--force-bf16", action="store_true",
                   help="measure bfloat16 also where the CPU would emulate it")  # fmt: skip
    p.add_argument("--checkpoint", default="", help="a trained model: its AP in fp32 and bf16")
    p.add_argument("--config", default="Synthetic/gfl_R_18_FPN_shapes.py",
                   help="the checkpoint's config (a file or a model-zoo name)")  # fmt: skip
    add_report_arguments(p, None)
    args = p.parse_args(argv)
    if args.name is None:  # the machine's cores, or the threads asked for
        n = args.threads
        args.name = (
            f"cpu_throughput_cpu_{n}thread{'s' if n > 1 else ''}"
            if n
            else (f"cpu_throughput_cpu_{os.cpu_count()}cores")
        )
    return args


def main(argv=None):
    from .reports import render_again, write_report

    args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    print(write_report(args.results, args.name, measure(args), render))
    return 0
