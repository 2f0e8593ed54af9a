"""
What the dataset-folder formats (COCO, Pascal VOC, YOLO) read into:
detectron2's dataset dicts with contiguous class ids, the class names, and the
ids the files use for them; and an image's size as detectron2 will load it.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from PIL import Image

__all__ = ["FolderDataset", "image_size", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# EXIF orientations that rotate by 90 degrees (detectron2's read_image applies them)
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass
class FolderDataset:
    """
    One split of a dataset on disk, read.

    ``records``: detectron2's list of dicts (``file_name``, ``image_id``,
    ``height``, ``width``, ``annotations`` with XYXY_ABS boxes, contiguous
    ``category_id`` in ``[0, len(classes))``, ``iscrowd`` 1 for regions that
    are ignored in evaluation such as VOC's ``difficult`` objects).
    ``dataset_ids``: the category id the files use for each class (COCO's
    ids; the class index for VOC and YOLO). ``json_file``: the COCO json the
    split was read from (the evaluator's ground truth), if any.
    """

    layout: str
    root: str
    split: str
    records: List[Dict]
    classes: List[str]
    dataset_ids: List[int]
    json_file: Optional[str] = None


def image_size(path: str) -> Tuple[int, int]:
    """
    ``(width, height)`` of an image as detectron2 will load it (EXIF rotation
    applied), from its header only. Raises ``OSError`` naming the problem.
    """
    if not os.path.isfile(path):
        raise OSError("image file not found")
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block: detectron2 ignores it too
                orientation = 1
    except Exception as e:  # PIL raises several types for foreign or corrupt files
        raise OSError(f"cannot be read as an image ({type(e).__name__}: {e})") from None
    return (h, w) if orientation in _TRANSPOSING_ORIENTATIONS else (w, h)
