"""
MMDetection 3.3's GFL as the benchmark's peer: the same R-50-FPN GFL in the
two frameworks with the same weights (MMDetection's own initialisation, head
weights that give confident detections, saved as MMDetection's runner saves,
read by :func:`gfl_d2.convert.load_mmdet_checkpoint` and converted by
:func:`gfl_d2.convert.convert_mmdet_state_dict`), timed on the
same images, the two frameworks alternating inside every repetition
(:func:`gfl_studies.benchmark.interleaved`).

What is timed, per framework:

* inference: a uint8 image (as each framework's data loading gives it: RGB
  for detectron2, BGR for MMDetection) to detections: normalisation,
  padding, backbone, FPN, head, decoding, NMS;
* a training step: the same images and ground truth; forward, ATSS, losses,
  backward, an SGD step (momentum 0.9, weight decay 1e-4);
* ATSS assignment alone: gfl-d2's ``label_anchors`` against MMDetection's
  ``ATSSAssigner.assign`` (called once per image, as its head does), on the
  same anchors and boxes;
* a profile: the seconds of each stage of inference and of the training
  step, and the share of the convolutions in a ``torch.profiler`` trace.

Skipped, with a one-line note, when MMDetection is not importable.
"""

import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from gfl_d2.cpu_inference import FrozenCPUDetector, FrozenCPUInference

from .benchmark import Line, _cell, coco_like_boxes, interleaved, sync
from .mmdet_runtime import (
    MMDET_CONFIGS,
    build_mmdet_gfl,
    mmdet_available,
    mmdet_sample,
    save_as_mmdet,
    trained_like,
)

__all__ = [
    "PEER",
    "FROZEN",
    "SKIP_NOTE",
    "PEER_PLANS",
    "build_pair",
    "peer_fns",
    "stage_profile",
    "conv_share",
    "run_peer_benchmark",
    "render",
]

PEER = "mmdet"  # the peer's name in a result's models
SKIP_NOTE = (
    "MMDetection peer skipped: mmdet is not importable "
    "(pip install mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0 to measure it)"
)
SGD = dict(
    lr=1e-5, momentum=0.9, weight_decay=1e-4
)  # a small rate: the weights stay as converted, near enough

FROZEN = "gfl_frozen"  # gfl-d2 through FrozenCPUDetector (CPU inference lines only)
NAMES = {"gfl": "gfl-d2", FROZEN: "gfl-d2, cpu_inference=frozen", PEER: "MMDetection 3.3"}

PEER_PLANS = {
    "smoke": dict(
        lines=[
            Line("infer", (96, 128), 1),
            Line("train", (96, 128), 1),
            Line("assign", (256, 384), 2, boxes=20),
        ],
        repeat=1,
        warmup=0,
    ),
    "quick": dict(
        lines=[
            Line("infer", (320, 512), 1),
            Line("train", (320, 512), 2),
            Line("assign", (800, 1333), 16, boxes=100),
        ],
        repeat=5,
        warmup=1,
    ),
    "full": dict(
        lines=[
            Line("infer", (800, 1333), 1),
            Line("infer", (320, 512), 1),
            Line("train", (800, 1333), 2),
            Line("train", (320, 512), 2),
            Line("assign", (800, 1333), 16, boxes=100),
        ],
        repeat=5,
        warmup=1,
    ),
    "gpu_check": dict(
        lines=[
            Line("infer", (800, 1333), 1),
            Line("train", (800, 1333), 2),
            Line("assign", (800, 1333), 16, boxes=100),
        ],
        repeat=10,
        warmup=3,
    ),
    "gpu_check_smoke": dict(
        lines=[
            Line("infer", (64, 96), 1),
            Line("train", (64, 96), 1),
            Line("assign", (256, 384), 2, boxes=20),
        ],
        repeat=1,
        warmup=0,
    ),
}


def build_pair(device: str = "cpu") -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(gfl-d2's GFL, MMDetection's GFL), R-50-FPN 1x, with the same weights, both in eval mode."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    from gfl_d2.convert import convert_mmdet_state_dict, load_mmdet_checkpoint
    from gfl_d2.model_zoo import get_config_file

    theirs, _ = build_mmdet_gfl(MMDET_CONFIGS["R-50 1x"])
    trained_like(theirs)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "mmdet.pth")
        save_as_mmdet(theirs, src)
        converted, info = convert_mmdet_state_dict(*load_mmdet_checkpoint(src))
    config = info["config"]  # the config of gfl-d2 that has the converted architecture
    ours = instantiate(LazyConfig.load(get_config_file(config)).model)
    incompatible = DetectionCheckpointer(ours)._load_model({"model": converted})
    if incompatible.missing_keys or incompatible.unexpected_keys or incompatible.incorrect_shapes:
        raise RuntimeError(f"the converted weights do not fit gfl-d2's {config}: {incompatible}")
    return ours.to(device).eval(), theirs.to(device).eval()


def _images(n: int, size, seed: int, device) -> List[torch.Tensor]:
    """``n`` uint8 BGR images (3, H, W)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8).to(device)
        for _ in range(n)
    ]


def _ours_inputs(images, gts=None):
    items = [
        {"image": im.flip(0)} for im in images
    ]  # detectron2's loaders give RGB (the config's format)
    for item, gt in zip(items, gts or []):
        item["instances"] = gt
    return items


def _theirs_data(images, gts=None):
    h, w = images[0].shape[1:]
    samples = [
        mmdet_sample(h, w, *((gt.gt_boxes.tensor, gt.gt_classes) if gt is not None else ()))
        for gt in (gts or [None] * len(images))
    ]
    return {"inputs": list(images), "data_samples": samples}


def _inference(ours, theirs, images) -> Dict[str, Callable]:
    """
    gfl-d2 (eager; on the CPU also through ``FrozenCPUDetector``) and MMDetection, image to
    detections.
    """
    ours_in, theirs_data = _ours_inputs(images), _theirs_data(images)
    frozen = FrozenCPUDetector(ours).eval()

    def run_ours(mode="eager"):
        with torch.no_grad():
            (frozen if mode == "frozen" else ours)(ours_in)

    def run_theirs():
        with torch.no_grad():
            theirs.test_step(theirs_data)

    fns = {"gfl": run_ours, PEER: run_theirs}
    if images[0].device.type == "cpu":
        fns[FROZEN] = lambda: run_ours("frozen")
    return fns


def _training(ours, theirs, images, gts) -> Dict[str, Callable]:
    from detectron2.utils.events import EventStorage
    from mmengine.optim import OptimWrapper

    ours_in, theirs_data = _ours_inputs(images, gts), _theirs_data(images, gts)
    ours_sgd = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], **SGD)
    theirs_sgd = OptimWrapper(
        torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], **SGD)
    )

    def run_ours():
        with EventStorage():
            losses = ours(ours_in)
            sum(losses.values()).backward()
        ours_sgd.step()
        ours_sgd.zero_grad(set_to_none=True)

    def run_theirs():
        theirs.train_step(theirs_data, theirs_sgd)

    return {"gfl": run_ours, PEER: run_theirs}


def _assignment(ours, theirs, size, n_images, n_boxes, device) -> Dict[str, Callable]:
    from mmengine.structures import InstanceData

    from gfl_d2.bins import anchors_for_image_size

    gts = [
        g.to(device)
        for g in coco_like_boxes(n_images, size, seed=2, mean_boxes=n_boxes, crowded_every=0)
    ]
    anchors = anchors_for_image_size(ours, size, device)
    priors = InstanceData(priors=torch.cat([a.tensor for a in anchors]))
    per_level = [len(a) for a in anchors]
    theirs_gts = [InstanceData(bboxes=g.gt_boxes.tensor, labels=g.gt_classes) for g in gts]
    assigner = theirs.bbox_head.assigner

    def run_ours():
        with torch.no_grad():
            ours.label_anchors(anchors, gts)

    def run_theirs():
        with torch.no_grad():
            for gt in theirs_gts:
                assigner.assign(priors, per_level, gt)

    return {"gfl": run_ours, PEER: run_theirs}


def peer_fns(ours, theirs, line: Line, device) -> Dict[str, Callable]:
    """
    The functions timed on ``line`` for gfl-d2 (``"gfl"``) and MMDetection (:data:`PEER`); modes
    set.
    """
    if line.kind == "assign":
        return _assignment(ours, theirs, line.size, line.batch, line.boxes, device)
    train = line.kind == "train"
    ours.train(train)
    theirs.train(train)
    images = _images(line.batch, line.size, seed=1 if train else 0, device=device)
    if train:
        gts = [g.to(device) for g in coco_like_boxes(line.batch, line.size, seed=1)]
        return _training(ours, theirs, images, gts)
    return _inference(ours, theirs, images)


# ------------------------------------------------------------------ where the time goes
def _ours_stages(model, images, clock):
    """gfl-d2's inference, stage by stage: ``clock(name)`` is called at the end of each."""
    with torch.no_grad():
        batch = model.preprocess_image(_ours_inputs(images))
        clock("preprocess")
        features = model.backbone(batch.tensor)
        features = [features[f] for f in model.head_in_features]
        clock("backbone+FPN")
        predictions = model.head(features)
        clock("head")
        model.forward_inference(batch, features, predictions)
        clock("decode+NMS")


def _theirs_stages(model, images, clock):
    """MMDetection's inference, stage by stage, as its ``test_step`` runs it."""
    with torch.no_grad():
        data = model.data_preprocessor(_theirs_data(images), False)
        clock("preprocess")
        features = model.extract_feat(data["inputs"])
        clock("backbone+FPN")
        outputs = model.bbox_head(features)
        clock("head")
        metas = [s.metainfo for s in data["data_samples"]]
        model.bbox_head.predict_by_feat(*outputs, batch_img_metas=metas, rescale=True)
        clock("decode+NMS")


# one frozen graph per model, built in the warm-up round and kept
_FROZEN: Dict[int, FrozenCPUInference] = {}


def _frozen_stages(model, images, clock):
    """gfl-d2's inference through FrozenCPUDetector: backbone, FPN and head are one frozen graph."""
    if id(model) not in _FROZEN:
        _FROZEN[id(model)] = FrozenCPUInference(model.backbone, model.head, model.head_in_features)
    frozen = _FROZEN[id(model)]
    with torch.no_grad():
        batch = model.preprocess_image(_ours_inputs(images))
        clock("preprocess")
        features, predictions = frozen(batch.tensor)
        clock("backbone+FPN+head (frozen)")
        model.forward_inference(batch, features, predictions)
        clock("decode+NMS")


def stage_profile(ours, theirs, size, device, repeat: int = 3) -> Dict[str, Dict[str, float]]:
    """Median seconds of each inference stage, per framework, the frameworks alternating."""
    ours.eval()
    theirs.eval()
    images = _images(1, size, seed=0, device=device)
    runs = [("gfl", ours, _ours_stages), (PEER, theirs, _theirs_stages)]
    if images[0].device.type == "cpu":
        runs.append((FROZEN, ours, _frozen_stages))
    times = {name: {} for name, _, _ in runs}
    for r in range(repeat + 1):  # the first round warms up (and builds the frozen graph)
        for name, model, stages in runs:
            last = [time.perf_counter()]

            def clock(stage, name=name):
                sync(device)
                now = time.perf_counter()
                if r:
                    times[name].setdefault(stage, []).append(now - last[0])
                last[0] = now

            stages(model, images, clock)
    return {n: {s: statistics.median(t) for s, t in st.items()} for n, st in times.items()}


# ------------------------------------------------------------------ report
def render(data: Dict) -> str:
    """The Markdown of a peer result: the timed lines with their ratios, then the profile."""
    if "results" not in data:
        return data.get("note", SKIP_NOTE)
    results, names = data["results"], [n for n in ("gfl", FROZEN, PEER) if n in data["results"]]
    ours = [n for n in names if n != PEER]
    lines = [
        "gfl-d2 against MMDetection 3.3: GFL R-50-FPN 1x with the same weights (MMDetection's, "
        "converted by "
        "tools/convert_mmdet_checkpoint.py), the same images, the frameworks alternating inside "
        "every "
        f"repetition; {data['device']}, torch {data['torch']}, measured {data['date']}, "
        f"{data['mode']} mode, "
        f"{data['repeat']} runs after {data['warmup']} warm-up. Seconds per image (inference: "
        "uint8 image to "
        "detections), per training step (forward, ATSS, losses, backward, SGD), per call "
        "(assignment of all "
        "the images): median (min-max); the ratios are of the medians.",
        "",
        "| measure | "
        + " | ".join(NAMES[n] for n in names)
        + " | "
        + " | ".join(f"{NAMES[n]} / MMDetection" for n in ours)
        + " |",
        "|---|" + "---|" * (len(names) + len(ours)),
    ]
    for label in data["lines"]:
        ratios = data["ratios"].get(label, {})
        cells = [_cell(results[n].get(label)) for n in names]
        cells += [f"{ratios[f'{n}/{PEER}']:.3f}" if f"{n}/{PEER}" in ratios else "-" for n in ours]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    profile = data.get("profile")
    if profile:
        h, w = profile["stages_size"]
        stages = profile["stages"]
        order = list(dict.fromkeys(s for n in names if n in stages for s in stages[n]))
        lines += [
            "",
            f"Where the time goes: inference at {h}x{w}, median seconds per stage (the frameworks "
            "alternating):",
            "",
            "| stage | " + " | ".join(NAMES[n] for n in names if n in stages) + " |",
            "|---|" + "---:|" * len([n for n in names if n in stages]),
        ]
        for stage in order:
            lines.append(
                f"| {stage} | "
                + " | ".join(
                    f"{stages[n][stage]:.4f}" if stage in stages[n] else ""
                    for n in names
                    if n in stages
                )
                + " |"
            )
        share = profile["conv_share"]
        kinds = list(dict.fromkeys(k for n in share for k in share[n]))
        lines += [
            "",
            "Convolutions (forward and backward kernels) as a share of the self CPU time of one "
            "run "
            "(torch.profiler):",
            "",
            "| line | " + " | ".join(NAMES[n] for n in share) + " |",
            "|---|" + "---:|" * len(share),
        ]
        for kind in kinds:
            lines.append(
                f"| {kind} | "
                + " | ".join(f"{share[n][kind]:.0%}" if kind in share[n] else "" for n in share)
                + " |"
            )
    return "\n".join(lines)


def conv_share(fn: Callable) -> float:
    """
    The share of convolution kernels in the self time of one run of ``fn`` (torch.profiler, CPU
    ops).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(
        e.self_cpu_time_total
        for e in events
        if "conv" in e.key and "backward" not in e.key.lower() or "convolution_backward" in e.key
    )
    return conv / total if total else float("nan")


def run_peer_benchmark(mode: str, device: str, repeat=None, warmup=None, log=print) -> Dict:
    """
    The peer lines of ``mode`` (:data:`PEER_PLANS`); a result in the format of
    :mod:`gfl_studies.benchmark` (``results`` of "gfl" and :data:`PEER`, ``ratios``
    "gfl/mmdet") plus ``profile``; ``{"note": SKIP_NOTE}`` without MMDetection.
    """
    if not mmdet_available():
        return {"note": SKIP_NOTE}
    plan = PEER_PLANS[mode]
    repeat = plan["repeat"] if repeat is None else repeat
    warmup = plan["warmup"] if warmup is None else warmup
    ours, theirs = build_pair(device)
    results, lines = {"gfl": {}, FROZEN: {}, PEER: {}}, {}
    for line in plan["lines"]:
        log(f"[benchmark] MMDetection peer: {line.name}")
        fns = peer_fns(ours, theirs, line, device)
        per = line.batch if line.kind == "infer" else 1
        for name, st in interleaved(fns, device, repeat, warmup).items():
            results[name][line.label] = {k: (v / per if k != "runs" else v) for k, v in st.items()}
        lines[line.label] = dict(
            kind=line.kind, size=list(line.size), batch=line.batch, boxes=line.boxes
        )
    ratios = {
        label: {
            f"{name}/{PEER}": results[name][label]["median"] / results[PEER][label]["median"]
            for name in ("gfl", FROZEN)
            if label in results[name]
        }
        for label in lines
    }
    profile = _profile(ours, theirs, plan["lines"], device, log)
    device_name = (
        torch.cuda.get_device_name(0)
        if str(device).startswith("cuda")
        else f"CPU ({os.cpu_count()} cores)"
    )
    return dict(
        date=time.strftime("%Y-%m-%d"),
        device=device_name,
        torch=torch.__version__,
        mode=mode,
        repeat=repeat,
        warmup=warmup,
        lines=lines,
        results={k: v for k, v in results.items() if v},
        ratios=ratios,
        profile=profile,
    )


def _profile(ours, theirs, lines: Sequence[Line], device, log) -> Dict:
    """
    Per framework: inference stages at the largest inference size, the convolutions' share of
    each kind of line.
    """
    largest = max(
        (ln for ln in lines if ln.kind == "infer"), key=lambda ln: ln.size[0] * ln.size[1]
    )
    log(f"[benchmark] MMDetection peer: profile at {largest.name}")
    out = dict(
        stages_size=list(largest.size),
        stages=stage_profile(ours, theirs, largest.size, device),
        conv_share={},
    )
    for line in (
        largest,
        max((ln for ln in lines if ln.kind == "train"), key=lambda ln: ln.size[0] * ln.size[1]),
    ):
        for name, fn in peer_fns(ours, theirs, line, device).items():
            if name == FROZEN:
                # the frozen graph's kernels run inside one traced call: the profiler
                # cannot split them
                continue
            fn()  # warm
            out["conv_share"].setdefault(name, {})[line.name] = conv_share(fn)
    return out
