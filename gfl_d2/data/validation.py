"""
Checks of a detection dataset (detectron2's list of dicts) before training, so
that a broken dataset fails at once with the file and the problem named,
rather than hours later or silently.
"""
import logging
import math
from collections import Counter
from typing import Dict, List, Optional


from detectron2.structures import BoxMode

from .folder_dataset import image_size

__all__ = ["DatasetError", "DatasetProblems", "check_dataset_dicts"]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset is wrong (not merely degenerate): it must be fixed before training."""


def _xyxy(ann) -> List[float]:
    box = [float(v) for v in ann["bbox"]]
    if len(box) != 4:
        raise DatasetError(f"a bbox has {len(box)} values instead of 4: {ann['bbox']}")
    return BoxMode.convert(box, ann.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)


def _image_file_problem(path: str, height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Read only the image header: missing, unreadable or of another size than annotated?"""
    try:
        w, h = image_size(path)  # as detectron2 loads it: EXIF rotation applied
    except OSError as e:
        return str(e)
    if height is not None and width is not None and (h, w) != (height, width):
        return f"image is {w}x{h} but its record says {width}x{height}"
    return None


def check_dataset_dicts(
    dataset_dicts: List[Dict],
    num_classes: Optional[int] = None,
    check_files: bool = True,
    max_listed: int = 5,
) -> List[Dict]:
    """
    Check every record and annotation; return ``dataset_dicts`` unchanged.

    Errors (:class:`DatasetError`, naming the images): a missing image file or
    one whose header cannot be read or disagrees with the recorded size
    (``check_files``; the pixels are not decoded), non-finite box coordinates, a class id outside ``[0, num_classes)``, a
    malformed bbox. Merely degenerate annotations are counted and logged, since
    detectron2's mapper handles them: boxes with zero or negative width/height
    (dropped), boxes partly or wholly outside the image (clipped, dropped if
    nothing is left).
    """
    if not dataset_dicts:
        raise DatasetError("the dataset is empty")
    errors: List[str] = []
    counts: Counter = Counter()
    for record in dataset_dicts:
        name = record.get("file_name", f"image_id={record.get('image_id')}")
        h, w = record.get("height"), record.get("width")
        if check_files and "file_name" in record:
            problem = _image_file_problem(record["file_name"], h, w)
            if problem:
                errors.append(f"{name}: {problem}")
        anns = record.get("annotations", [])
        counts["boxes"] += len(anns)
        counts["max_boxes_per_image"] = max(counts["max_boxes_per_image"], len(anns))
        for i, ann in enumerate(anns):
            if ann.get("iscrowd", 0):
                continue
            try:
                x0, y0, x1, y1 = _xyxy(ann)
            except (DatasetError, TypeError, ValueError, KeyError) as e:
                errors.append(f"{name}: annotation {i}: malformed bbox ({e})")
                continue
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                errors.append(f"{name}: annotation {i}: non-finite box coordinates {ann['bbox']}")
                continue
            cls = ann.get("category_id")
            if num_classes is not None and not (isinstance(cls, int) and 0 <= cls < num_classes):
                errors.append(f"{name}: annotation {i}: class id {cls!r} outside [0, {num_classes})")
            if x1 <= x0 or y1 <= y0:
                counts["degenerate"] += 1
            elif h is not None and w is not None:
                if x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
                    counts["outside"] += 1
                elif x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                    counts["partly_outside"] += 1
    if errors:
        listed = "\n  ".join(errors[:max_listed])
        more = f"\n  ... and {len(errors) - max_listed} more" if len(errors) > max_listed else ""
        raise DatasetError(f"{len(errors)} problem(s) in the dataset ({len(dataset_dicts)} images):\n  {listed}{more}")
    notes = []
    if counts["degenerate"]:
        notes.append(f"{counts['degenerate']} boxes with zero or negative width/height (dropped)")
    if counts["partly_outside"]:
        notes.append(f"{counts['partly_outside']} boxes partly outside their image (clipped)")
    if counts["outside"]:
        notes.append(f"{counts['outside']} boxes wholly outside their image (dropped)")
    if notes:
        logger.warning(f"Dataset check ({counts['boxes']} boxes): " + "; ".join(notes))
    logger.info(
        f"Dataset check passed: {len(dataset_dicts)} images, {counts['boxes']} boxes, "
        f"at most {counts['max_boxes_per_image']} in one image"
    )
    return dataset_dicts


class DatasetProblems:
    """
    What reading a dataset found: errors (each with the file and line or entry
    where it is) are raised together at the end, so that one run lists them
    all; notes (things handled, e.g. a clipped box) are counted and logged with
    a few examples, so that nothing is dropped or changed silently.
    """

    def __init__(self, what: str, max_listed: int = 8):
        self.what = what
        self.max_listed = max_listed
        self.errors: List[str] = []
        self.notes: Counter = Counter()
        self.examples: Dict[str, List[str]] = {}

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def note(self, kind: str, where: Optional[str] = None) -> None:
        self.notes[kind] += 1
        if where is not None:
            listed = self.examples.setdefault(kind, [])
            if len(listed) < 3:
                listed.append(where)

    def raise_errors(self) -> None:
        if not self.errors:
            return
        listed = "\n  ".join(self.errors[: self.max_listed])
        more = f"\n  ... and {len(self.errors) - self.max_listed} more" if len(self.errors) > self.max_listed else ""
        raise DatasetError(f"{len(self.errors)} problem(s) in {self.what}:\n  {listed}{more}")

    def log_notes(self) -> None:
        for kind, count in sorted(self.notes.items()):
            where = self.examples.get(kind)
            logger.warning(f"{self.what}: {count} {kind}" + (f" (e.g. {'; '.join(where)})" if where else ""))
