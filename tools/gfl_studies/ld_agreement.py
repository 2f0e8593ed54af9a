"""
What can a Localization Distillation teacher teach its students? The study
behind ``tools/ld_agreement.py``.

On validation images with their ground truth, every model (the teacher and
each student) is run on the same inputs, and the ATSS positives are taken
once from the ground truth (they depend only on the anchors, which LD
requires to be the same). At those positives, for each model:

* ``iou``: the IoU of its decoded box with the matched ground-truth box;
* ``edge error``: the mean |decoded edge - ground-truth edge|, in strides;
* ``KL to teacher``: the KL divergence from the teacher's edge distribution
  to the model's (over the ``n + 1`` bins, T = 1), mean over edges;
* ``LD loss``: gfl-d2's LD loss per edge at the students' temperature;
* ``teacher closer``: the share of edges whose teacher edge lies closer to
  the ground truth than the model's (ties count half).

A teacher whose boxes are barely better than a student's has little to teach
at the positives, however well LD moves the student's distributions.
"""

import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K

from gfl_d2.modeling.losses import localization_distillation_loss

from .quality_study import _ground_truth

__all__ = ["positive_outputs", "agreement", "collect_agreement", "render", "COLUMNS"]

COLUMNS = ("positives", "iou", "edge error", "KL to teacher", "LD loss", "teacher closer")


@torch.no_grad()
def positive_outputs(model, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
    """
    One model's outputs at the ATSS positives of a batch.

    Args:
        model: a GFL model with edge distributions (``reg_max > 0``), in eval mode.
        batched_inputs: detectron2 inputs, each with ``instances`` (gt boxes and
            classes in the input image's coordinates).

    Returns:
        ``logits`` (P, 4, n+1), ``edges`` (P, 4) decoded box and ``targets``
        (P, 4) ground-truth box, both in strides, ``iou`` (P,), and ``index``
        (P, 2) (image, anchor) of each positive.
    """
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    predictions = model.head(features)
    channels = model.box2box_transform.num_outputs
    box_regs = [permute_to_N_HWA_K(r, channels) for r in predictions[1]]  # (N, R_l, 4(n+1))
    anchors = model.anchor_generator(features)
    gt = [x["instances"].to(images.tensor.device) for x in batched_inputs]
    gt_labels, gt_boxes = model.label_anchors(anchors, gt)
    gt_labels = torch.stack(gt_labels)
    pos_mask = (gt_labels >= 0) & (gt_labels != model.num_classes)
    pos = model.decode_positives(pos_mask, anchors, box_regs, gt_boxes)
    return dict(
        logits=pos.box_regs.unflatten(-1, (4, -1)).float(),
        edges=pos.pred_boxes.float(),
        targets=pos.target_boxes.float(),
        iou=pos.ious.float(),
        index=torch.stack([pos.img, pos.anchor], dim=1),
    )


def agreement(
    model: Dict[str, torch.Tensor], teacher: Dict[str, torch.Tensor], temperature: float
) -> Dict:
    """
    Per-positive values of one model against the teacher, at the same positives.

    Args:
        model, teacher: from :func:`positive_outputs` on the same batch.
        temperature: the LD temperature of the ``LD loss`` column.

    Returns:
        (P,) arrays: ``iou``, ``edge error``, ``KL to teacher``, ``LD loss``
        and ``teacher closer`` (each a mean over the 4 edges).
    """
    if not torch.equal(model["index"], teacher["index"]):
        raise ValueError(
            "model and teacher have different positives on the same batch: "
            "their anchors differ (LD needs the same strides and anchors)"
        )
    if model["logits"].shape != teacher["logits"].shape:
        raise ValueError(
            f"model edge logits {tuple(model['logits'].shape)} and teacher's "
            f"{tuple(teacher['logits'].shape)} differ: LD needs the same n"
        )
    log_p = torch.log_softmax(teacher["logits"].double(), dim=-1)
    log_q = torch.log_softmax(model["logits"].double(), dim=-1)
    # both are >= 0; rounding can leave -1e-9 where the distributions agree
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp(min=0)  # (P, 4)
    ld = localization_distillation_loss(model["logits"], teacher["logits"], temperature).clamp(
        min=0
    )  # (P, 4)
    err = (model["edges"] - model["targets"]).abs()
    teacher_err = (teacher["edges"] - teacher["targets"]).abs()
    closer = (teacher_err < err).double() + 0.5 * (teacher_err == err).double()
    return {
        "iou": model["iou"].double(),
        "edge error": err.double().mean(dim=1),
        "KL to teacher": kl.mean(dim=1),
        "LD loss": ld.double().mean(dim=1),
        "teacher closer": closer.mean(dim=1),
    }


def _with_ground_truth(inputs: Dict, record: Dict) -> Dict:
    """The mapped input with the record's ground truth, scaled to the mapped image."""
    from detectron2.structures import Boxes, Instances

    h, w = inputs["image"].shape[-2:]
    boxes, classes = _ground_truth(record, record["height"], record["width"])
    scale = torch.tensor([w / record["width"], h / record["height"]] * 2, dtype=boxes.dtype)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(boxes * scale)
    inst.gt_classes = classes
    return dict(inputs, instances=inst)


@torch.no_grad()
def collect_agreement(
    models: Dict[str, torch.nn.Module],
    teacher: torch.nn.Module,
    dataset_dicts: List[Dict],
    mapper,
    temperature: float,
    num_images: Optional[int] = None,
    batch_size: int = 8,
) -> Dict[str, Dict[str, float]]:
    """
    The table of the report: for the teacher and every model, the mean of each
    :data:`COLUMNS` value over all positives of the first ``num_images`` records.
    """
    for m in (teacher, *models.values()):
        m.eval()
    records = dataset_dicts[:num_images]
    parts: Dict[str, Dict[str, List[np.ndarray]]] = {}
    all_models = dict(teacher=teacher, **models)
    for start in range(0, len(records), batch_size):
        batch = [
            _with_ground_truth(mapper(copy.deepcopy(r)), r)
            for r in records[start : start + batch_size]
        ]
        outputs = {name: positive_outputs(m, batch) for name, m in all_models.items()}
        for name, out in outputs.items():
            for key, v in agreement(out, outputs["teacher"], temperature).items():
                parts.setdefault(name, {}).setdefault(key, []).append(v.numpy())
    table = {}
    for name, cols in parts.items():
        values = {k: np.concatenate(v) for k, v in cols.items()}
        table[name] = dict(
            positives=int(len(values["iou"])), **{k: float(v.mean()) for k, v in values.items()}
        )
    return table


def render(data: Dict) -> str:
    """The Markdown of a report written by ``tools/ld_agreement.py``."""
    s = data["setup"]
    models = "; ".join(f"{m['name']}: {m['config']} with {m['weights']}" for m in s["models"])
    lines = [
        f"Measured {s['date']} on {s['device']}, {s['images']} validation images, at the ATSS "
        "positives "
        f"of their ground truth. Teacher: {s['teacher']['config']} with {s['teacher']['weights']}. "
        f"Models: {models}. KL to teacher: over the bins at T = 1, mean over edges; LD loss: "
        "gfl-d2's, "
        f"at T = {s['temperature']:g}, per edge; edge error in strides; teacher closer: the share "
        "of edges "
        "whose teacher edge is closer to the ground truth (ties half).",
        "",
        "| model | positives | IoU | edge error | KL to teacher | LD loss | teacher closer |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in data["table"].items():
        lines.append(
            f"| {name} | {row['positives']} | {row['iou']:.4f} | {row['edge error']:.4f} | "
            f"{row['KL to teacher']:.4f} | {row['LD loss']:.4f} | {row['teacher closer']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def model_specs(specs: Sequence[Sequence[str]]) -> List[Dict[str, str]]:
    return [dict(name=n, config=c, weights=w) for n, c, w in specs]
