"""
A YOLO-layout dataset: images with one label file each, a line
``class cx cy w h`` per object, coordinates normalised by the image size.

Where the splits are: ``data.yaml`` (Ultralytics: ``path``, ``train``/``val``
as folders, lists of folders or ``.txt`` image lists, ``names`` as a list or
an ``{index: name}`` map), else ``images/<split>/`` or ``<split>/images/``
with the class names in ``classes.txt`` (or ``obj.names``), one per line.
An image's label file is its path with the last ``images`` folder replaced by
``labels`` and the extension by ``.txt``. An image without a label file, or
with an empty one, has no objects (counted in the log).
"""
import glob
import math
import os
from typing import Dict, List, Optional, Tuple

import yaml

from detectron2.structures import BoxMode

from .folder_dataset import IMAGE_EXTENSIONS, FolderDataset, image_size
from .validation import DatasetError, DatasetProblems

__all__ = ["read_yolo_split", "yolo_class_names", "yolo_split_images", "label_path", "YAML_FILES", "NAME_FILES"]

YAML_FILES = ("data.yaml", "dataset.yaml", "data.yml")
NAME_FILES = ("classes.txt", "obj.names")
# normalised values this far outside [0, 1] are rounding, not an error
_EPS = 1e-6
_SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val"), "test": ("test",)}


def _yaml_file(root: str) -> Optional[str]:
    return next((os.path.join(root, n) for n in YAML_FILES if os.path.isfile(os.path.join(root, n))), None)


def _load_yaml(root: str) -> Tuple[Optional[str], Dict]:
    path = _yaml_file(root)
    if path is None:
        return None, {}
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise DatasetError(f"{path}{'' if line is None else f':{line + 1}'}: not valid YAML ({e})") from None
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a mapping (names, train, val), got {type(content).__name__}")
    return path, content


def yolo_class_names(root: str) -> List[str]:
    """The class names, index = YOLO class id: ``data.yaml``'s ``names``, else ``classes.txt`` / ``obj.names``."""
    path, content = _load_yaml(root)
    if path is not None and "names" in content:
        names = content["names"]
        if isinstance(names, dict):
            keys = sorted(names)
            if keys != list(range(len(keys))):
                raise DatasetError(f"{path}: 'names' must map the indices 0..{len(keys) - 1}, got keys {keys}")
            names = [names[k] for k in keys]
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{path}: 'names' must be a non-empty list or {{index: name}} map, got {names!r}")
        names = [str(n) for n in names]
        nc = content.get("nc")
        if nc is not None and nc != len(names):
            raise DatasetError(f"{path}: nc is {nc} but 'names' has {len(names)} entries")
    else:
        name_file = next((os.path.join(root, n) for n in NAME_FILES if os.path.isfile(os.path.join(root, n))), None)
        if name_file is None:
            raise DatasetError(
                f"YOLO layout: no class names in {root}: add {YAML_FILES[0]} with 'names: [...]', or "
                f"{NAME_FILES[0]} with one name per line (line k = class k)"
            )
        with open(name_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        path = name_file
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(f"{path}: class names listed twice: {dup}")
    return names


def _images_in(folder: str) -> List[str]:
    found = [p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
             if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _images_of_entry(entry, base: str, where: str, problems: DatasetProblems) -> List[Tuple[str, str]]:
    """(image path, where it was listed) of a data.yaml split entry: folder(s) or .txt list(s)."""
    if isinstance(entry, list):
        return [item for e in entry for item in _images_of_entry(e, base, where, problems)]
    path = entry if os.path.isabs(str(entry)) else os.path.normpath(os.path.join(base, str(entry)))
    if os.path.isdir(path):
        return [(p, p) for p in _images_in(path)]
    if os.path.isfile(path) and path.endswith(".txt"):
        listed = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if line:
                    image = line if os.path.isabs(line) else os.path.normpath(os.path.join(base, line))
                    listed.append((image, f"{path}:{lineno}"))
        return listed
    raise DatasetError(f"{where}: split entry {entry!r} is neither a folder nor a .txt list ({path} not found)")


def yolo_split_images(root: str, split: str, problems: DatasetProblems) -> List[Tuple[str, str]]:
    """The images of ``split`` as ``(path, where listed)``; an image listed twice is an error."""
    path, content = _load_yaml(root)
    names = _SPLIT_ALIASES.get(split, (split,))
    entry = next((content[n] for n in names if content.get(n)), None) if path else None
    if entry is not None:
        base = content.get("path") or os.path.dirname(path)
        base = base if os.path.isabs(str(base)) else os.path.normpath(os.path.join(os.path.dirname(path), str(base)))
        if not os.path.isdir(base):
            base = os.path.dirname(path)  # a 'path' of the machine the dataset was exported on
        images = _images_of_entry(entry, base, path, problems)
    else:
        folders = [os.path.join(root, a, b) for n in names for a, b in (("images", n), (n, "images"))]
        folder = next((f for f in folders if os.path.isdir(f)), None)
        if folder is None:
            looked = ", ".join(os.path.relpath(f, root) for f in folders[:2])
            raise DatasetError(f"YOLO layout: no images of split {split!r} in {root} (looked for {looked}"
                               + (f", and {os.path.basename(path)} names no {split!r}" if path else "") + ")")
        images = [(p, p) for p in _images_in(folder)]
    seen: Dict[str, str] = {}
    unique = []
    for image, where in images:
        if image in seen:
            problems.error(where, f"image {image} listed twice (also {seen[image]})")
            continue
        seen[image] = where
        unique.append((image, where))
    if not unique:
        raise DatasetError(f"YOLO layout: split {split!r} of {root} has no images")
    return unique


def label_path(image: str) -> str:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the extension ``.txt``."""
    head, sep, tail = image.rpartition(f"{os.sep}images{os.sep}")
    stem = os.path.splitext(tail if sep else image)[0]
    return f"{head}{os.sep}labels{os.sep}{stem}.txt" if sep else stem + ".txt"


def _read_labels(path: str, width: int, height: int, num_classes: int, problems: DatasetProblems) -> List[Dict]:
    annotations = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not any(line.strip() for line in lines):
        problems.note("images with an empty label file (no objects)", path)
        return annotations
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            hint = " (a segmentation polygon? only boxes are read)" if len(fields) > 5 else ""
            problems.error(where, f"{len(fields)} fields, expected 5: class cx cy w h{hint}")
            continue
        try:
            cls_value = float(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            problems.error(where, f"not numbers: {line.strip()!r}")
            continue
        if cls_value != int(cls_value) or not 0 <= cls_value < num_classes:
            problems.error(where, f"class {fields[0]} is not one of 0..{num_classes - 1} (the {num_classes} class names)")
            continue
        values = (cx, cy, w, h)
        if not all(math.isfinite(v) and -_EPS <= v <= 1 + _EPS for v in values):
            problems.error(where, f"values outside [0, 1]: {line.strip()!r} (YOLO coordinates are divided by the "
                                  f"image size, {width}x{height})")
            continue
        x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
        y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
        if x0 < -_EPS * width or y0 < -_EPS * height or x1 > (1 + _EPS) * width or y1 > (1 + _EPS) * height:
            problems.note("boxes reaching outside their image (clipped to it)", where)
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            problems.note("boxes of zero width or height (dropped)", where)
            continue
        annotations.append({"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS,
                            "category_id": int(cls_value), "iscrowd": 0})
    return annotations


def read_yolo_split(root: str, split: str, classes: Optional[List[str]] = None) -> FolderDataset:
    """Read ``split`` of the YOLO-layout dataset under ``root`` (all problems reported at once)."""
    problems = DatasetProblems(f"YOLO dataset {root} ({split})")
    classes = classes or yolo_class_names(root)
    records = []
    labels_seen: Dict[str, str] = {}
    for image, where in yolo_split_images(root, split, problems):
        try:
            width, height = image_size(image)
        except OSError as e:
            problems.error(where if where != image else image, f"{image}: {e}" if where != image else str(e))
            continue
        labels = label_path(image)
        if labels in labels_seen:
            problems.error(image, f"shares its label file {labels} with {labels_seen[labels]}")
            continue
        labels_seen[labels] = image
        if os.path.isfile(labels):
            annotations = _read_labels(labels, width, height, len(classes), problems)
        else:
            problems.note("images without a label file (no objects)", image)
            annotations = []
        image_id = os.path.splitext(os.path.relpath(image, root))[0]
        records.append({"file_name": image, "image_id": image_id, "height": height, "width": width,
                        "annotations": annotations})
    problems.raise_errors()
    problems.log_notes()
    return FolderDataset("yolo", root, split, records, list(classes), list(range(len(classes))))
