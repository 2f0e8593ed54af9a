"""
The measuring pieces of ``tools/benchmark.py`` and ``tools/gpu_check.py``: the
three R-50-FPN detectors with one backbone, COCO-like inputs, interleaved
timing, label assignment alone, peak memory.
"""
import resource
import statistics
import time

import torch

from .analysis import anchors_for_image_size
from .model_zoo import get_config_file

__all__ = ["build_model", "coco_like_boxes", "batch_inputs", "interleaved", "inference_fn", "training_fn",
           "assignment_fn", "peak_rss_mib", "sync"]


# ------------------------------------------------------------------ models and data
def build_model(name, device):
    """R-50-FPN GFL / GFL V2 / FCOS / RetinaNet, randomly initialised, 80 classes."""
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig, instantiate

    if name in ("gfl", "gflv2"):
        cfg = LazyConfig.load(get_config_file(f"COCO-Detection/{name}_R_50_FPN_1x.py"))
    else:
        cfg = model_zoo.get_config(f"COCO-Detection/{name}_R_50_FPN_1x.py")
    cfg.model.backbone.bottom_up.freeze_at = 2  # as in the COCO configs of all three
    # one backbone for all: GFL's (pytorch-style ResNet-50, stride on the 3x3 conv).
    # detectron2's FCOS/RetinaNet configs put it on the 1x1 conv, which costs less.
    cfg.model.backbone.bottom_up.stages.stride_in_1x1 = False
    torch.manual_seed(0)
    return instantiate(cfg.model).to(device)


def coco_like_boxes(n_images, size, seed, mean_boxes=7, crowded_every=8):
    """
    Per image, Instances with K boxes (7 to 600 px sides) and classes: K is
    1 + Poisson(mean_boxes - 1) with every ``crowded_every``-th image holding
    50+ boxes; ``crowded_every=0``: exactly ``mean_boxes`` boxes per image.
    """
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    h, w = size
    out = []
    for i in range(n_images):
        if crowded_every and (i + 1) % crowded_every == 0:
            k = 50 + int(torch.randint(0, 10, (1,), generator=g))
        elif crowded_every:
            k = int(torch.poisson(torch.tensor(float(mean_boxes - 1)), generator=g)) + 1
        else:
            k = mean_boxes  # exactly this many
        side = torch.exp(torch.empty(k, 2).uniform_(2.0, 6.4, generator=g)).clamp(max=min(h, w) * 0.9)  # 7-600 px
        xy = torch.rand(k, 2, generator=g) * (torch.tensor([w, h]) - side)
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.cat([xy, xy + side], 1))
        inst.gt_classes = torch.randint(0, 80, (k,), generator=g)
        out.append(inst)
    return out


def batch_inputs(n, size, with_gt, seed=0):
    g = torch.Generator().manual_seed(seed)
    gts = coco_like_boxes(n, size, seed) if with_gt else [None] * n
    items = []
    for gt in gts:
        item = {"image": torch.randint(0, 256, (3, *size), generator=g).float()}
        if gt is not None:
            item["instances"] = gt
        items.append(item)
    return items


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------ measurements
def interleaved(fns, device, repeat, warmup):
    """Time several functions round-robin (each repeat runs every one), so that drifts of
    the machine's speed hit all models alike. Returns {name: stats}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {n: dict(median=statistics.median(t), min=min(t), max=max(t), runs=len(t)) for n, t in times.items()}


def inference_fn(model, inputs):
    def run():
        with torch.no_grad():
            model(inputs)
    return run


def training_fn(model, inputs):
    from detectron2.utils.events import EventStorage

    def run():
        with EventStorage():
            losses = model(inputs)
            sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
    return run


def assignment_fn(model, size, n_images, n_boxes, device):
    """Label assignment alone: the anchors of the model's padded feature maps, its label_anchors."""
    gts = [inst.to(device) for inst in coco_like_boxes(n_images, size, seed=2, mean_boxes=n_boxes, crowded_every=0)]
    anchors = anchors_for_image_size(model, size, device)

    def run():
        with torch.no_grad():
            model.label_anchors(anchors, gts)
    return run


def peak_rss_mib():
    """Peak resident memory of this process. Linux's VmHWM, unlike ru_maxrss, is not
    inherited from the parent across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
