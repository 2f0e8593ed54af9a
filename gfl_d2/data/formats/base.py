"""
The interface every dataset-folder format implements (:class:`DatasetFormat`),
and the file conventions the formats share: the first of several candidate
files that exists, a class-names file, and placing an image in a folder
being written.
"""

import os
import shutil
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..folder_dataset import FolderDataset
from ..problems import DatasetError

__all__ = [
    "DatasetFormat",
    "first_file",
    "check_class_names",
    "read_class_file",
    "place_image",
    "image_stem",
]


@dataclass(frozen=True)
class DatasetFormat:
    """
    One layout of a dataset folder (COCO, Pascal VOC, YOLO).

    ``name``: how configs name it (``dataset.layout``). ``expected``: what a
    folder of this layout holds, for the message when no layout is
    recognised. The functions:

    * ``detect(root) -> bool``: whether ``root`` looks like this layout;
    * ``class_names(root, split) -> List[str]``: the class names, in the
      order of the contiguous ids;
    * ``read(root, split) -> FolderDataset``: one split as detectron2 dataset
      dicts, every problem named (file and line) in one ``DatasetError``;
    * ``write(root, split, records, classes, dataset_ids=None) -> str``:
      detectron2 dataset dicts (XYXY_ABS or any ``bbox_mode``, contiguous
      ``category_id``) as a split of this layout; returns the main file
      written. ``dataset_ids``: the ids the files use for the classes, where
      the format has its own (COCO).
    """

    name: str
    expected: str
    detect: Callable[[str], bool]
    class_names: Callable[[str, str], List[str]]
    read: Callable[[str, str], FolderDataset]
    write: Callable[..., str]


def first_file(paths: Iterable[str]) -> Optional[str]:
    """The first of ``paths`` that is a file, or None."""
    return next((p for p in paths if os.path.isfile(p)), None)


def check_class_names(names: Sequence[str], source: str) -> List[str]:
    """
    ``names`` as a list; DatasetError (naming ``source``) if there are none or one is listed twice.
    """
    names = list(names)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{source}: class names listed twice: {dup}")
    if not names:
        raise DatasetError(f"{source}: names no classes")
    return names


def read_class_file(path: str) -> List[str]:
    """The class names of a text file, one per line (line k: class k), blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        return check_class_names([line.strip() for line in f if line.strip()], path)


def image_stem(record: Dict) -> str:
    """
    The image's file name without folder and extension (VOC's image id, YOLO's label file name).
    """
    return os.path.splitext(os.path.basename(record["file_name"]))[0]


def place_image(src: str, dst: str) -> None:
    """
    Put the image ``src`` at ``dst``: hard-linked where possible (no copy of the
    pixels), else copied.
    """
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
