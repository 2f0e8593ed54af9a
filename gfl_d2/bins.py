"""
The fit of GFL's bins to a dataset: the regression targets of the ATSS
positives in units of stride (the paper's Fig. 5c) against the range
``0, Δ, ..., nΔ`` the edge distributions cover. Training logs it before it
starts (:func:`log_bin_fit`), ``tools/visualize_distributions.py
--analyze-targets`` draws it.
"""

import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes
from detectron2.utils import comm

from .modeling.box_coding import anchor_points, box2distance

__all__ = [
    "anchors_for_image_size",
    "regression_targets",
    "bin_fit",
    "log_bin_fit",
    "BIN_FIT_FILE",
]

# the fit of the bins, written by log_bin_fit into a run's output folder
BIN_FIT_FILE = "bin_fit.json"

logger = logging.getLogger(__name__)


def anchors_for_image_size(model, image_size: Sequence[int], device="cpu") -> List[Boxes]:
    """
    A dense detector's anchors (per level) for an input of ``image_size``
    (H, W), padded as the model pads it, without running the backbone.
    """
    div = getattr(model, "size_divisibility", None) or model.backbone.size_divisibility or 1
    h, w = (math.ceil(int(x) / div) * div for x in image_size)
    strides = [model.backbone.output_shape()[f].stride for f in model.head_in_features]
    return model.anchor_generator(
        [torch.empty(1, 1, math.ceil(h / s), math.ceil(w / s), device=device) for s in strides]
    )


@torch.no_grad()
def regression_targets(
    model, dataset_dicts: Sequence[Dict], mapper, max_images: int
) -> Tuple[np.ndarray, np.ndarray]:
    """
    The edge distances (in strides) that ``model``'s ATSS assignment gives its
    positives, over the first ``max_images`` images of ``dataset_dicts`` as
    ``mapper`` loads them.

    Returns:
        (T,) distances and the (T,) strides of their levels.
    """
    device = model.device
    targets, strides = [], []
    for d in dataset_dicts[:max_images]:
        item = mapper(d)
        instances = item["instances"].to(device)
        if len(instances) == 0:
            continue
        anchors = anchors_for_image_size(model, item["image"].shape[-2:], device)
        (labels,), (matched,) = model.label_anchors(anchors, [instances])
        pos = labels < model.num_classes
        centers, stride = anchor_points(
            torch.cat([a.tensor for a in anchors])[pos], model.level_strides(anchors)[pos]
        )
        targets.append((box2distance(centers, matched[pos]) / stride).flatten())
        strides.append(stride.expand(-1, 4).flatten())
    if not targets:
        raise ValueError("no positive anchor in the analysed images")
    return torch.cat(targets).cpu().numpy(), torch.cat(strides).cpu().numpy()


def _advice(
    clamped: float,
    p99: float,
    reg_max: int,
    bin_width: float,
    recommended: int,
    fixed_by: Optional[str],
    setting: str,
) -> Optional[str]:
    """
    What to do about the fit (None: nothing). With ``fixed_by``, n is not the
    user's to change.
    """
    beyond = (
        f"{clamped:.1%} of the regression targets lie beyond the last bin "
        f"({reg_max} x {bin_width:g} strides) and are clamped, so those boxes cannot be learnt"
    )
    if fixed_by is not None:
        if clamped <= 0.01:
            return None  # a range wider than the targets costs a trained box layer nothing to keep
        return (
            f"{beyond}. n = {reg_max} is fixed by the trained box layer of {fixed_by} "
            "(another n would discard it): a smaller input size (dataset.min_size, "
            "dataset.max_size) makes the large objects fewer strides wide"
        )
    change = setting.format(n=recommended)
    if clamped > 0.01:
        return f"{beyond}: use {change}"
    if recommended * 2 <= reg_max:
        return (
            f"99% of the regression targets lie within {p99:.1f} strides, far inside the "
            f"{reg_max} bins: {change} concentrates the distributions on the range that is used"
        )
    return None


def bin_fit(
    targets: np.ndarray,
    strides: np.ndarray,
    reg_max: int,
    bin_width: float,
    fixed_by: Optional[str] = None,
    setting: str = "model.head.box2box_transform.reg_max={n}",
) -> Dict:
    """
    How well the bins ``0, Δ, ..., nΔ`` (strides) fit regression targets, and
    the advice. A target beyond ``(n - 0.1)Δ`` is clamped in training (its
    box cannot be learnt): when more than 1% are, the advice is the n that
    covers 99% of the targets. When that n is at most half the configured
    one, the distributions spread over bins that no target reaches: the
    advice is the smaller n.

    Args:
        targets, strides: (T,) arrays of :func:`regression_targets`.
        fixed_by: None when the box layer trains from scratch, so that n may
            be chosen; else what fixes n (the checkpoint whose trained box
            layer the run starts from): the advice then never asks for
            another n, which would discard that layer.
        setting: the override that sets n, ``{n}`` standing for the value
            (yacs: ``"MODEL.GFL.REG_MAX {n}"``).

    Returns:
        dict: percentiles, share clamped, per-level 99th percentiles, the n
        covering 99% of the targets, ``fixed_by``, ``advice`` (None: nothing
        to do) and ``advised_change`` (the override it asks for, or None).
    """
    p50, p99 = (float(np.percentile(targets, q)) for q in (50, 99))
    clamped = float((targets > (reg_max - 0.1) * bin_width).mean())
    recommended = max(2, int(math.ceil(p99 / bin_width + 0.1)))
    levels = {int(s): float(np.percentile(targets[strides == s], 99)) for s in np.unique(strides)}
    advice = _advice(clamped, p99, reg_max, bin_width, recommended, fixed_by, setting)
    change = setting.format(n=recommended)
    return dict(
        num_targets=int(len(targets)),
        reg_max=int(reg_max),
        bin_width=float(bin_width),
        median=p50,
        p99=p99,
        max=float(targets.max()),
        share_clamped=clamped,
        p99_per_stride=levels,
        recommended_reg_max=recommended,
        fixed_by=fixed_by,
        advice=advice,
        advised_change=change if advice and change in advice else None,
    )


def log_bin_fit(
    model,
    dataset,
    mapper,
    num_images: int,
    fixed_by: Optional[str] = None,
    setting: str = "model.head.box2box_transform.reg_max={n}",
    output_dir: Optional[str] = None,
) -> Optional[Dict]:
    """
    One log line on how ``model``'s bins fit the regression targets of the
    first ``num_images`` records of ``dataset``; a warning with what to do
    if they do not (see :func:`bin_fit` for ``fixed_by`` and ``setting``).
    With ``output_dir``, the fit (and the line, ``summary``) is also written
    to ``output_dir/bin_fit.json``. Returns the fit (None: no distributions,
    not the main process, or no positive anchor in the sample).
    """
    transform = model.box2box_transform
    if not getattr(transform, "has_distributions", False) or not comm.is_main_process():
        return None
    try:
        targets, strides = regression_targets(model, dataset, mapper, num_images)
    except ValueError:
        return None  # no positive anchor in the sample: nothing to say
    fit = bin_fit(targets, strides, transform.reg_max, transform.bin_width, fixed_by, setting)
    per_level = ", ".join(f"P{int(math.log2(s))} {p:.1f}" for s, p in fit["p99_per_stride"].items())
    if fixed_by is None:
        n_note = f"n = {fit['recommended_reg_max']} would cover 99%"
    else:
        n_note = f"n = {transform.reg_max} is fixed by the trained box layer of {fixed_by}"
    fit["summary"] = (
        f"{fit['num_targets']} regression targets of "
        f"{min(num_images, len(dataset))} images: median {fit['median']:.2f}, "
        f"99% within {fit['p99']:.2f} strides (per level: {per_level}); the bins cover "
        f"{transform.reg_max} x {transform.bin_width:g} strides, "
        f"{fit['share_clamped']:.2%} of the targets beyond; {n_note}"
    )
    logger.info(f"GFL bins: {fit['summary']}")
    if fit["advice"]:
        logger.warning(f"GFL bins: {fit['advice']}")
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, BIN_FIT_FILE), "w") as f:
            json.dump(fit, f, indent=2)
    return fit
