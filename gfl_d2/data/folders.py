"""
A dataset folder in any of three layouts (COCO, Pascal VOC, YOLO), detected
or named, registered with detectron2's ``DatasetCatalog`` and
``MetadataCatalog``: ``COCOEvaluator``, the data loaders and the ``Visualizer``
then work unchanged, and the class names and their number come from the files.
The formats themselves are :mod:`gfl_d2.data.formats` (one module each, one
registry); this module only asks the registry.

LazyConfig (``configs/OwnData/*.py``)::

    names=L(register_dataset)(root="${dataset.root}", split="train", layout="${dataset.layout}")
    num_classes=L(dataset_num_classes)(
        root="${dataset.root}", split="train", layout="${dataset.layout}"
    )

The split is read when it is registered, so that a broken file stops the run
before training with every problem named (file and line), and what was
handled (clipped boxes, images without objects, ``difficult`` objects) is
counted in the log.
"""

import copy
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .folder_dataset import FolderDataset
from .formats import DATASET_FORMATS, LAYOUTS, get_format
from .problems import DatasetError

__all__ = [
    "LAYOUTS",
    "detect_layout",
    "read_dataset_folder",
    "register_dataset",
    "dataset_num_classes",
    "dataset_classes",
    "write_layout",
]

logger = logging.getLogger(__name__)

# (absolute root, split, layout) -> registered name
_REGISTERED: Dict[Tuple[str, str, str], str] = {}


def detect_layout(root: str) -> str:
    """
    "coco", "voc" or "yolo", from what ``root`` holds; DatasetError naming what was looked for.
    """
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root}")
    found = [name for name, fmt in DATASET_FORMATS.items() if fmt.detect(root)]
    if len(found) == 1:
        return found[0]
    if found:
        raise DatasetError(
            f"{root} looks like more than one layout ({', '.join(found)}): name it with "
            f"dataset.layout={found[0]} (yacs: DATASETS.FOLDER.LAYOUT {found[0]})"
        )
    expected = [fmt.expected for fmt in DATASET_FORMATS.values()]
    raise DatasetError(
        f"cannot tell the layout of {root}: expected {', '.join(expected[:-1])} or {expected[-1]}"
    )


def _resolve(root: str, layout: str) -> Tuple[str, str]:
    """The absolute ``root`` and the layout's name (detected for "auto")."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    layout = str(layout).lower()
    if layout == "auto":
        return root, detect_layout(root)
    layout = get_format(layout, also=("auto",)).name
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root}")
    return root, layout


def read_dataset_folder(root: str, split: str, layout: str = "auto") -> FolderDataset:
    """
    Read one split of the dataset under ``root`` (``layout``: "auto", "coco", "voc" or "yolo").
    """
    root, layout = _resolve(root, layout)
    return get_format(layout).read(root, split)


def write_layout(
    layout: str,
    root: str,
    split: str,
    records: Sequence[Dict],
    classes: Sequence[str],
    dataset_ids: Optional[Sequence[int]] = None,
) -> str:
    """
    Write detectron2 dataset dicts as one split of a dataset folder in
    ``layout`` ("coco", "voc", "yolo"): for tests and generated datasets, and
    to move a registered dataset into another tool's format. Images are
    hard-linked where possible, else copied; ``dataset_ids``: the category
    ids the files use (COCO only; default 1..K). Returns the main file written.
    """
    return get_format(layout).write(root, split, records, classes, dataset_ids)


def _default_name(root: str, split: str) -> str:
    base = os.path.basename(root.rstrip(os.sep)) or "dataset"
    name, k = f"{base}_{split}", 2
    while name in DatasetCatalog.list():
        name, k = f"{base}_{split}_{k}", k + 1
    return name


def register_dataset(
    root: str, split: str = "train", layout: str = "auto", name: Optional[str] = None
) -> str:
    """
    Read ``split`` of the dataset under ``root`` and register it; return its
    name (default ``<folder>_<split>``). Registering the same folder and split
    again returns the same name.
    """
    root, layout = _resolve(root, layout)
    key = (root, str(split), layout)
    if key in _REGISTERED and (name is None or name == _REGISTERED[key]):
        return _REGISTERED[key]
    data = read_dataset_folder(root, split, layout)
    name = name or _default_name(root, split)
    if name in DatasetCatalog.list():
        raise DatasetError(f"a dataset named {name!r} is registered already: choose another name")
    records = data.records
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    meta = dict(
        thing_classes=data.classes,
        dataset_root=root,
        layout=layout,
        split=split,
        evaluator_type="coco",
    )
    if (
        data.json_file is not None
    ):  # COCOEvaluator reads the ground truth (and the original ids) from it
        meta.update(
            json_file=data.json_file,
            thing_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(data.dataset_ids)},
        )
    MetadataCatalog.get(name).set(**meta)
    _REGISTERED[key] = name
    num_boxes = sum(len(r["annotations"]) for r in records)
    empty = sum(1 for r in records if not r["annotations"])
    logger.info(
        f"Registered dataset {name!r}: {layout} layout, split {split!r} of {root}: "
        f"{len(records)} images "
        f"({empty} without objects), {num_boxes} objects, {len(data.classes)} classes: "
        f"{', '.join(data.classes)}"
    )
    return name


def dataset_classes(names: Sequence[str]) -> List[str]:
    """The class names the registered datasets ``names`` share; DatasetError if they differ."""
    names = [names] if isinstance(names, str) else list(names)
    classes = [list(MetadataCatalog.get(n).get("thing_classes", None) or []) for n in names]
    for n, c in zip(names[1:], classes[1:]):
        if c != classes[0]:
            raise DatasetError(
                f"datasets {names[0]!r} and {n!r} name different classes: {classes[0]} vs {c}"
            )
    if not classes or not classes[0]:
        raise DatasetError(
            f"dataset {names[0] if names else None!r} has no class names (thing_classes)"
        )
    return classes[0]


def dataset_num_classes(root: str, split: str = "train", layout: str = "auto") -> int:
    """The number of classes of the dataset under ``root`` (registering ``split`` if needed)."""
    return len(dataset_classes([register_dataset(root, split, layout)]))
