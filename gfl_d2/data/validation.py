"""
Checks of a detection dataset (detectron2's list of dicts) before training, so
that a broken dataset fails at once with the file and the problem named,
rather than hours later or silently.
"""

import logging
from typing import Dict, List, Optional

from .box_policy import BoxFate, BoxRules, box_xyxy
from .folder_dataset import image_size
from .problems import DatasetError, DatasetProblems

__all__ = ["check_dataset_dicts"]

logger = logging.getLogger(__name__)

_DEGENERATE = "boxes with zero or negative width/height (dropped)"
# detectron2's mapper and the model clip and drop these boxes (the same policy):
# the check only counts them
BOX_RULES = BoxRules(
    notes={
        BoxFate.EMPTY: _DEGENERATE,
        BoxFate.INVERTED: _DEGENERATE,
        BoxFate.CLIPPED: "boxes partly outside their image (clipped)",
        BoxFate.OUTSIDE: "boxes wholly outside their image (dropped)",
    }
)


def _image_file_problem(path: str, height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Read only the image header: missing, unreadable or of another size than annotated?"""
    try:
        w, h = image_size(path)  # as detectron2 loads it: EXIF rotation applied
    except OSError as e:
        return str(e)
    if height is not None and width is not None and (h, w) != (height, width):
        return f"image is {w}x{h} but its record says {width}x{height}"
    return None


def _check_annotations(
    record: Dict, name: str, num_classes: Optional[int], problems: DatasetProblems
) -> None:
    """
    Errors for malformed or non-finite boxes and unknown class ids; notes for
    boxes the training drops or clips.
    """
    height, width = record.get("height"), record.get("width")
    for i, ann in enumerate(record.get("annotations", [])):
        if ann.get("iscrowd", 0):
            continue
        where = f"{name}: annotation {i}"
        try:
            box = box_xyxy(ann)
        except (DatasetError, TypeError, ValueError, KeyError) as e:
            problems.error(where, f"malformed bbox ({e})")
            continue
        fate, _ = BOX_RULES.apply(box, width, height, where, problems, shown=ann["bbox"])
        if fate == BoxFate.NONFINITE:
            continue
        cls = ann.get("category_id")
        if num_classes is not None and not (isinstance(cls, int) and 0 <= cls < num_classes):
            problems.error(where, f"class id {cls!r} outside [0, {num_classes})")


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
    (``check_files``; the pixels are not decoded), non-finite box
    coordinates, a class id outside ``[0, num_classes)``, a malformed bbox
    (``bbox_mode`` included). Merely degenerate annotations are counted and
    logged, since detectron2's mapper and the model handle them by the record
    policy (:mod:`gfl_d2.data.box_policy`): boxes with zero or negative
    width/height (dropped), boxes partly outside the image (clipped) or
    wholly outside it (dropped).
    """
    if not dataset_dicts:
        raise DatasetError("the dataset is empty")
    problems = DatasetProblems(f"the dataset ({len(dataset_dicts)} images)", max_listed=max_listed)
    num_boxes = max_boxes = 0
    for record in dataset_dicts:
        name = record.get("file_name", f"image_id={record.get('image_id')}")
        if check_files and "file_name" in record:
            problem = _image_file_problem(
                record["file_name"], record.get("height"), record.get("width")
            )
            if problem:
                problems.error(name, problem)
        num_boxes += len(record.get("annotations", []))
        max_boxes = max(max_boxes, len(record.get("annotations", [])))
        _check_annotations(record, name, num_classes, problems)
    problems.raise_errors()
    problems.log_notes(heading=f"Dataset check ({num_boxes} boxes)")
    logger.info(
        f"Dataset check passed: {len(dataset_dicts)} images, {num_boxes} boxes, "
        f"at most {max_boxes} in one image"
    )
    return dataset_dicts
