"""
The record policy: what happens to a box that does not fit its image, written
once and applied by the folder readers (VOC, YOLO; COCO judges the box shape
only, detectron2's loader keeps its boxes), by the dataset check before
training, and, on tensors, by the model's ground-truth checks.

Each box gets one :class:`BoxFate`, the first that applies of:

* ``NONFINITE``: a NaN or infinite coordinate (an error everywhere);
* ``INVERTED``: ``x1 < x0`` or ``y1 < y0``;
* ``OUTSIDE``: no part of it inside the image;
* ``EMPTY``: zero width or height;
* ``CLIPPED``: reaching outside the image by more than a tolerance;
* ``KEPT``: inside (or overhanging by at most the tolerance).

A box is clipped to its image; ``INVERTED``, ``OUTSIDE`` and ``EMPTY`` boxes
are dropped (a reader may make some of them errors instead, see
:class:`BoxRules`). The conditions are written once (:func:`_conditions`) on
operators that Python floats and torch tensors share, so that the readers
(float lists, no torch overhead per box) and the model (tensors, no host
synchronisation) judge a box identically.
"""

import enum
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import BoxMode
from torch import Tensor

from .problems import DatasetError, DatasetProblems

__all__ = ["BoxFate", "DROPPED", "box_xyxy", "box_fate", "box_fates", "BoxRules"]


class BoxFate(enum.IntEnum):
    KEPT = 0
    CLIPPED = 1
    EMPTY = 2
    OUTSIDE = 3
    INVERTED = 4
    NONFINITE = 5


DROPPED = (BoxFate.EMPTY, BoxFate.OUTSIDE, BoxFate.INVERTED, BoxFate.NONFINITE)


def box_xyxy(ann: Mapping) -> List[float]:
    """
    The ``bbox`` of a detectron2 annotation as XYXY_ABS. ``bbox_mode`` is
    required, as in detectron2's dataset dicts (its mapper reads it too):
    guessing a default would silently misread one of the two common modes.
    """
    box = [float(v) for v in ann["bbox"]]
    if len(box) != 4:
        raise DatasetError(f"a bbox has {len(box)} values instead of 4: {ann['bbox']}")
    if "bbox_mode" not in ann:
        raise DatasetError(
            "the annotation has no 'bbox_mode' (detectron2's BoxMode of its bbox, e.g. XYXY_ABS)"
        )
    if ann["bbox_mode"] == BoxMode.XYWH_ABS:
        # BoxMode.convert's float32 sum, without building a tensor per box
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, as in torch
            x, y, w, h = np.asarray(box, dtype=np.float32)
        return [float(x), float(y), float(x + w), float(y + h)]
    return BoxMode.convert(box, ann["bbox_mode"], BoxMode.XYXY_ABS)


def _conditions(x0, y0, x1, y1, width, height, tol_x, tol_y) -> Tuple[Tuple[BoxFate, object], ...]:
    """
    ``(fate, condition)`` from the highest precedence down; conditions are
    bools, or bool tensors of boxes.
    """
    # v - v is 0 for a finite v and NaN for NaN or +-Inf
    nonfinite = ((x0 - x0) != 0) | ((y0 - y0) != 0) | ((x1 - x1) != 0) | ((y1 - y1) != 0)
    if (
        width is None or height is None
    ):  # the image size is unknown: only the box itself can be judged
        return (
            (BoxFate.NONFINITE, nonfinite),
            (BoxFate.INVERTED, (x1 < x0) | (y1 < y0)),
            (BoxFate.EMPTY, (x1 == x0) | (y1 == y0)),
        )
    return (
        (BoxFate.NONFINITE, nonfinite),
        (BoxFate.INVERTED, (x1 < x0) | (y1 < y0)),
        (BoxFate.OUTSIDE, (x0 >= width) | (y0 >= height) | (x1 <= 0) | (y1 <= 0)),
        (BoxFate.EMPTY, (x1 == x0) | (y1 == y0)),
        (
            BoxFate.CLIPPED,
            (x0 < -tol_x) | (y0 < -tol_y) | (x1 > width + tol_x) | (y1 > height + tol_y),
        ),
    )


def box_fate(
    box: Sequence[float],
    width: Optional[float],
    height: Optional[float],
    tolerance: Tuple[float, float] = (0.0, 0.0),
) -> Tuple[BoxFate, List[float]]:
    """
    The fate of one XYXY_ABS box in a ``width`` x ``height`` image (None:
    unknown, only the box's own shape is judged), and the box clipped to the
    image. ``tolerance``: how far (x, y, in px) a box may reach outside
    before it counts as ``CLIPPED`` (it is clipped all the same).
    """
    x0, y0, x1, y1 = map(float, box)
    fate = next(
        (f for f, hit in _conditions(x0, y0, x1, y1, width, height, *tolerance) if hit),
        BoxFate.KEPT,
    )
    if width is None or height is None:
        return fate, [x0, y0, x1, y1]
    w, h = float(width), float(height)
    return fate, [
        min(max(x0, 0.0), w),
        min(max(y0, 0.0), h),
        min(max(x1, 0.0), w),
        min(max(y1, 0.0), h),
    ]


def box_fates(boxes: Tensor, width: int, height: int) -> Tuple[Tensor, Tensor]:
    """
    :func:`box_fate` of each row of ``boxes`` (N, 4), XYXY_ABS, in a
    ``width`` x ``height`` image, with no tolerance and no host
    synchronisation. Returns the boxes clipped to the image (N, 4) and the
    fates (N,) as int64 :class:`BoxFate` values.
    """
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    clipped = torch.stack(
        [x0.clamp(0, width), y0.clamp(0, height), x1.clamp(0, width), y1.clamp(0, height)], dim=1
    )
    fates = torch.full_like(x0, int(BoxFate.KEPT), dtype=torch.long)
    for fate, hit in reversed(_conditions(x0, y0, x1, y1, width, height, 0.0, 0.0)):
        fates = fates.masked_fill(hit, int(fate))  # a higher precedence overwrites a lower one
    return clipped, fates


@dataclass(frozen=True)
class BoxRules:
    """
    What a reader or check does with each fate: an error (a message template
    with ``{box}``, ``{width}``, ``{height}``) or a counted note (a kind, see
    :class:`DatasetProblems`). ``NONFINITE`` is always an error (a default
    message unless ``errors`` has one); a fate in neither is clipped or
    dropped silently. ``tolerance``: px, or with ``relative`` a fraction of
    the image side.
    """

    errors: Dict[BoxFate, str] = field(default_factory=dict)
    notes: Dict[BoxFate, str] = field(default_factory=dict)
    tolerance: float = 0.0
    relative: bool = False

    def apply(
        self,
        box: Sequence[float],
        width: Optional[float],
        height: Optional[float],
        where: str,
        problems: DatasetProblems,
        shown: Optional[object] = None,
    ) -> Tuple[BoxFate, Optional[List[float]]]:
        """
        The fate of the XYXY_ABS ``box`` (reported at ``where`` as an error or
        a note; ``shown``: the box as the file has it, for the message,
        default ``box``) and the box clipped to its image, None if it is
        dropped or an error.
        """
        tolerance = (
            (self.tolerance * (width or 0.0), self.tolerance * (height or 0.0))
            if self.relative
            else (self.tolerance, self.tolerance)
        )
        fate, clipped = box_fate(box, width, height, tolerance)
        if fate in self.errors or fate == BoxFate.NONFINITE:
            message = self.errors.get(fate, "non-finite box coordinates {box}")
            problems.error(
                where,
                message.format(box=box if shown is None else shown, width=width, height=height),
            )
            return fate, None
        if fate in self.notes:
            problems.note(self.notes[fate], where)
        return fate, (None if fate in DROPPED else clipped)
