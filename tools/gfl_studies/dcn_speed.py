"""
Inference speed of the deformable-convolution models of the model zoo against
their plain twins (the same config without deformable stages), on one device,
same input size, same threads: milliseconds per image and the ratio. The
deformable layers run on ``torchvision.ops.deform_conv2d``.

    python tools/dcn_speed.py                         # CPU, 512x768, report dcn_speed_cpu_<n>cores
    python tools/dcn_speed.py --device cuda --size 800 1216 --name dcn_speed_h100
"""

import argparse
import os
import statistics
import time

import torch
from detectron2.config import LazyConfig, instantiate

from gfl_d2.model_zoo import get_config_file

from .reports import add_report_arguments, machine, render_again, write_report

# (deformable config, the overrides that make its plain twin)
PAIRS = [
    (
        "COCO-Detection/gfl_R_101_FPN_dconv_c3_c5_ms2x.py",
        ["model.backbone.bottom_up.stages.deform_on_per_stage=[False,False,False,False]"],
    ),
    (
        "COCO-Detection/gfl_X_101_32x4d_FPN_dconv_c4_c5_ms2x.py",
        ["model.backbone.bottom_up.stages.deform_on_per_stage=[False,False,False,False]"],
    ),
    (
        "COCO-Detection/gflv2_Res2Net_101_FPN_dconv_c4_c5_ms2x.py",
        ["model.backbone.bottom_up.stages.deform_on_per_stage=[False,False,False,False]"],
    ),
]


def build(config, overrides, device):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(get_config_file(config)), overrides)
    return instantiate(cfg.model).to(device).eval()


def _time_once(model, inputs, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    model(inputs)
    if cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t)


def time_pair(models, image, iterations, warmup):
    """
    Milliseconds per image of each of ``models`` on ``image``, the runs alternating between
    them (so that a load on the machine weighs on both alike); per model the median and all.
    """
    inputs = [{"image": image}]
    times = [[] for _ in models]
    with torch.no_grad():
        for i in range(warmup + iterations):
            for model, record in zip(models, times):
                t = _time_once(model, inputs, image.is_cuda)
                if i >= warmup:
                    record.append(t)
    return [(statistics.median(t), t) for t in times]


def measure(args):
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(3, *args.size, generator=g) * 255).to(args.device)
    rows = []
    for config, plain in PAIRS:
        row = dict(config=config, plain_overrides=plain)
        models = []
        for overrides in ([], plain):
            torch.manual_seed(0)
            models.append(build(config, overrides, args.device))
        timed = time_pair(models, image, args.iterations, args.warmup)
        (row["deformable_ms"], row["deformable_all_ms"]), (row["plain_ms"], row["plain_all_ms"]) = (
            timed
        )
        del models
        row["ratio"] = row["deformable_ms"] / row["plain_ms"]
        print(f"{config}: {row['deformable_ms']:.0f} ms vs plain {row['plain_ms']:.0f} ms")
        rows.append(row)
    header = dict(
        machine(args.device),
        threads=torch.get_num_threads(),
        size=list(args.size),
        iterations=args.iterations,
        warmup=args.warmup,
    )
    return dict(header=header, rows=rows)


def render(data):
    h = data["header"]
    lines = [
        "# Deformable models against their plain twins: inference speed",
        "",
        f"{h['date']}, {h['device']}, torch {h['torch']}, {h['threads']} threads; one "
        f"{h['size'][0]}x{h['size'][1]} image, batch 1, median of {h['iterations']} runs "
        f"after {h['warmup']} warm-up, alternating between the two models. Written by "
        "`tools/dcn_speed.py`.",
        "",
        "| config | deformable (ms/image) | plain twin (ms/image) | deformable / plain |",
        "|---|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| `{r['config']}` | {r['deformable_ms']:.0f} | {r['plain_ms']:.0f} | "
            f"{r['ratio']:.2f} |"
        )
    lines += [
        "",
        "The plain twin is the same config with `deform_on_per_stage` all off. Random "
        "weights: the time of every layer does not depend on their values.",
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, nargs=2, default=[512, 768], metavar=("H", "W"))
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    add_report_arguments(p, f"dcn_speed_cpu_{os.cpu_count()}cores")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    print(write_report(args.results, args.name, measure(args), render))
    return 0
