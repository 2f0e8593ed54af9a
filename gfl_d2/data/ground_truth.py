"""
Checks of the ground truth where it enters training, batch by batch, before
the model: the record policy of the datasets (:mod:`gfl_d2.data.box_policy`)
in tensor form, so that a box the dataset check counts as clipped or dropped
is clipped or dropped here, by the same rule. :class:`CheckedGroundTruth`
wraps a training loader; the training entry points apply it.
"""

import logging
from typing import Dict, List, Tuple

import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds
from torch import Tensor

from .box_policy import BoxFate, box_fates

__all__ = ["sanitize_gt_instances", "with_checked_ground_truth", "CheckedGroundTruth"]


def _name(inp: Dict, index: int) -> str:
    return inp.get("file_name") or (
        f"image_id={inp['image_id']}" if "image_id" in inp else f"batch item {index}"
    )


def _raise_if_wrong(
    batched_inputs: List[Dict],
    boxes: List[Tensor],
    fates: List[Tensor],
    classes: List[Tensor],
    num_classes: int,
) -> None:
    """
    ValueError naming the first image with a non-finite box or a class id
    outside ``[0, num_classes)``.
    """
    # one host synchronisation for the whole batch
    bad = torch.stack(
        [
            torch.stack([(f == BoxFate.NONFINITE).any(), ((c < 0) | (c >= num_classes)).any()])
            for f, c in zip(fates, classes)
        ]
    ).tolist()
    for i, (nonfinite, bad_class) in enumerate(bad):
        if nonfinite:
            sample = boxes[i][fates[i] == BoxFate.NONFINITE][0].tolist()
            raise ValueError(
                f"{_name(batched_inputs[i], i)}: ground-truth box with NaN/Inf coordinates {sample}"
            )
        if bad_class:
            ids = sorted(set(classes[i][(classes[i] < 0) | (classes[i] >= num_classes)].tolist()))
            raise ValueError(
                f"{_name(batched_inputs[i], i)}: ground-truth class ids {ids} "
                f"outside [0, {num_classes}) "
                f"(the model has num_classes={num_classes})"
            )


def sanitize_gt_instances(
    batched_inputs: List[Dict], num_classes: int, device: torch.device
) -> Tuple[List[Instances], Tensor, Tensor]:
    """
    Validate and clean the ``instances`` of a training batch.

    Raises ValueError, naming the image, for what means the data is wrong:
    non-finite box coordinates, class ids outside ``[0, num_classes)``. Clips
    boxes to their image and drops boxes with zero or negative width or
    height or wholly outside the image (:func:`gfl_d2.data.box_policy.box_fates`).

    Returns:
        the cleaned Instances (on ``device``), and the number of boxes that
        were clipped and dropped (0-dim tensors, not synchronised).
    """
    instances = [x["instances"].to(device) for x in batched_inputs]
    boxes = [inst.gt_boxes.tensor for inst in instances]
    judged = [
        box_fates(b, inst.image_size[1], inst.image_size[0]) for b, inst in zip(boxes, instances)
    ]
    _raise_if_wrong(
        batched_inputs,
        boxes,
        [f for _, f in judged],
        [inst.gt_classes for inst in instances],
        num_classes,
    )
    cleaned = []
    num_clipped = torch.zeros((), dtype=torch.long, device=device)
    num_dropped = torch.zeros((), dtype=torch.long, device=device)
    for inst, (clipped, fates) in zip(instances, judged):
        keep = fates <= BoxFate.CLIPPED  # KEPT or CLIPPED
        num_clipped += (fates == BoxFate.CLIPPED).sum()
        num_dropped += (~keep).sum()
        inst = inst[keep]
        inst.gt_boxes = Boxes(clipped[keep])
        cleaned.append(inst)
    return cleaned, num_clipped, num_dropped


def with_checked_ground_truth(
    batched_inputs: List[Dict], num_classes: int, device: torch.device
) -> List[Dict]:
    """
    The training inputs with their ``instances`` checked and cleaned by
    :func:`sanitize_gt_instances`; the numbers of clipped and dropped boxes go
    to the event storage (``gfl/gt_boxes_clipped``, ``gfl/gt_boxes_dropped``),
    and dropped boxes are also logged.
    """
    if not all("instances" in x for x in batched_inputs):
        raise ValueError("training needs 'instances' (ground truth) in every input")
    gt, num_clipped, num_dropped = sanitize_gt_instances(batched_inputs, num_classes, device)
    storage = get_event_storage()
    num_clipped, num_dropped = torch.stack([num_clipped, num_dropped]).tolist()
    storage.put_scalar("gfl/gt_boxes_clipped", num_clipped, smoothing_hint=False)
    storage.put_scalar("gfl/gt_boxes_dropped", num_dropped, smoothing_hint=False)
    if num_dropped > 0:
        log_every_n_seconds(
            logging.WARNING,
            f"GFL: dropped {num_dropped} ground-truth boxes with zero or negative width/height "
            f"(after clipping to the image) at iteration {storage.iter}",
            n=30,
            name=__name__,
        )
    return [dict(x, instances=g) for x, g in zip(batched_inputs, gt)]


class CheckedGroundTruth:
    """
    A training loader whose batches have their ``instances`` checked and
    cleaned by :func:`with_checked_ground_truth` (on the CPU, where the loader
    made them): a class id outside ``[0, num_classes)`` or a non-finite box
    stops training with the image named; boxes are clipped to their image and
    empty ones dropped, and the counts go to the event storage.
    """

    def __init__(self, loader, num_classes: int):
        self.loader, self.num_classes = loader, num_classes

    def __iter__(self):
        for batch in self.loader:
            yield with_checked_ground_truth(batch, self.num_classes, torch.device("cpu"))

    def __len__(self):
        return len(self.loader)
