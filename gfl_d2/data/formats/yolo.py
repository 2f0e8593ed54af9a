"""
The YOLO layout: images with one label file each, a line ``class cx cy w h``
per object, coordinates normalised by the image size.

Where the splits are: ``data.yaml`` (Ultralytics: ``path``, ``train``/``val``
as folders, lists of folders or ``.txt`` image lists, ``names`` as a list or
an ``{index: name}`` map), else ``images/<split>/`` or ``<split>/images/``
with the class names in ``classes.txt`` (or ``obj.names``), one per line.
An image's label file is its path with the last ``images`` folder replaced by
``labels`` and the extension by ``.txt``. An image without a label file, or
with an empty one, has no objects (counted in the log). YOLO labels cannot
mark a region as ignored: ``iscrowd`` objects are not written.
"""

import glob
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from detectron2.structures import BoxMode

from ..box_policy import BoxFate, BoxRules, box_xyxy
from ..folder_dataset import IMAGE_EXTENSIONS, FolderDataset, image_size
from ..problems import DatasetError, DatasetProblems
from .base import DatasetFormat, check_class_names, first_file, place_image, read_class_file

__all__ = [
    "FORMAT",
    "detect",
    "class_names",
    "read",
    "write",
    "split_images",
    "label_path",
    "YAML_FILES",
    "NAME_FILES",
]

YAML_FILES = ("data.yaml", "dataset.yaml", "data.yml")
NAME_FILES = ("classes.txt", "obj.names")
# normalised values this far outside [0, 1] are rounding, not an error
_EPS = 1e-6
_SPLIT_ALIASES = {
    "val": ("val", "valid", "validation"),
    "valid": ("valid", "val"),
    "test": ("test",),
}
_DROPPED_NOTE = "boxes of zero width or height (dropped)"
# the values are checked to lie in [0, 1] first, so no box can be an error here
BOX_RULES = BoxRules(
    notes={
        BoxFate.CLIPPED: "boxes reaching outside their image (clipped to it)",
        BoxFate.EMPTY: _DROPPED_NOTE,
        BoxFate.INVERTED: _DROPPED_NOTE,
        BoxFate.OUTSIDE: _DROPPED_NOTE,
    },
    tolerance=_EPS,
    relative=True,
)


def detect(root: str) -> bool:
    return bool(
        first_file(os.path.join(root, n) for n in YAML_FILES + NAME_FILES)
        or os.path.isdir(os.path.join(root, "labels"))
        or glob.glob(os.path.join(root, "*", "labels"))
    )


def _load_yaml(root: str) -> Tuple[Optional[str], Dict]:
    path = first_file(os.path.join(root, n) for n in YAML_FILES)
    if path is None:
        return None, {}
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise DatasetError(
            f"{path}{'' if line is None else f':{line + 1}'}: not valid YAML ({e})"
        ) from None
    if not isinstance(content, dict):
        raise DatasetError(
            f"{path}: expected a mapping (names, train, val), got {type(content).__name__}"
        )
    return path, content


def _yaml_names(path: str, content: Dict) -> List[str]:
    names = content["names"]
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DatasetError(
                f"{path}: 'names' must map the indices 0..{len(keys) - 1}, got keys {keys}"
            )
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise DatasetError(
            f"{path}: 'names' must be a non-empty list or {{index: name}} map, got {names!r}"
        )
    nc = content.get("nc")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{path}: nc is {nc} but 'names' has {len(names)} entries")
    return check_class_names([str(n) for n in names], path)


def class_names(root: str, split: Optional[str] = None) -> List[str]:
    """
    The class names, index = YOLO class id: ``data.yaml``'s ``names``, else
    ``classes.txt`` / ``obj.names``.
    """
    path, content = _load_yaml(root)
    if path is not None and "names" in content:
        return _yaml_names(path, content)
    name_file = first_file(os.path.join(root, n) for n in NAME_FILES)
    if name_file is None:
        raise DatasetError(
            f"YOLO layout: no class names in {root}: add {YAML_FILES[0]} with 'names: [...]', or "
            f"{NAME_FILES[0]} with one name per line (line k = class k)"
        )
    return read_class_file(name_file)


def _images_in(folder: str) -> List[str]:
    found = [
        p
        for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS
    ]
    return sorted(found)


def _images_of_entry(entry, base: str, where: str) -> List[Tuple[str, str]]:
    """(image path, where it was listed) of a data.yaml split entry: folder(s) or .txt list(s)."""
    if isinstance(entry, list):
        return [item for e in entry for item in _images_of_entry(e, base, where)]
    path = entry if os.path.isabs(str(entry)) else os.path.normpath(os.path.join(base, str(entry)))
    if os.path.isdir(path):
        return [(p, p) for p in _images_in(path)]
    if not (os.path.isfile(path) and path.endswith(".txt")):
        raise DatasetError(
            f"{where}: split entry {entry!r} is neither a folder nor a .txt list ({path} not found)"
        )
    with open(path, encoding="utf-8") as f:
        lines = [(lineno, line.strip()) for lineno, line in enumerate(f, 1)]
    return [
        (
            line if os.path.isabs(line) else os.path.normpath(os.path.join(base, line)),
            f"{path}:{lineno}",
        )
        for lineno, line in lines
        if line
    ]


def _yaml_split_images(path: str, content: Dict, entry) -> List[Tuple[str, str]]:
    base = content.get("path") or os.path.dirname(path)
    base = (
        base
        if os.path.isabs(str(base))
        else os.path.normpath(os.path.join(os.path.dirname(path), str(base)))
    )
    if not os.path.isdir(base):
        base = os.path.dirname(path)  # a 'path' of the machine the dataset was exported on
    return _images_of_entry(entry, base, path)


def _folder_split_images(
    root: str, split: str, names: Sequence[str], yaml_file: Optional[str]
) -> List[Tuple[str, str]]:
    folders = [os.path.join(root, a, b) for n in names for a, b in (("images", n), (n, "images"))]
    folder = next((f for f in folders if os.path.isdir(f)), None)
    if folder is None:
        looked = ", ".join(os.path.relpath(f, root) for f in folders[:2])
        raise DatasetError(
            f"YOLO layout: no images of split {split!r} in {root} (looked for {looked}"
            + (f", and {os.path.basename(yaml_file)} names no {split!r}" if yaml_file else "")
            + ")"
        )
    return [(p, p) for p in _images_in(folder)]


def split_images(root: str, split: str, problems: DatasetProblems) -> List[Tuple[str, str]]:
    """The images of ``split`` as ``(path, where listed)``; an image listed twice is an error."""
    path, content = _load_yaml(root)
    names = _SPLIT_ALIASES.get(split, (split,))
    entry = next((content[n] for n in names if content.get(n)), None) if path else None
    if entry is not None:
        images = _yaml_split_images(path, content, entry)
    else:
        images = _folder_split_images(root, split, names, path)
    seen: Dict[str, str] = {}
    unique = [
        (image, where)
        for image, where in images
        if problems.listed_once(seen, image, where, f"image {image}", where)
    ]
    if not unique:
        raise DatasetError(f"YOLO layout: split {split!r} of {root} has no images")
    return unique


def label_path(image: str) -> str:
    """
    Ultralytics' rule: the last ``images`` folder of the path becomes
    ``labels``, the extension ``.txt``.
    """
    head, sep, tail = image.rpartition(f"{os.sep}images{os.sep}")
    stem = os.path.splitext(tail if sep else image)[0]
    return f"{head}{os.sep}labels{os.sep}{stem}.txt" if sep else stem + ".txt"


def _annotation(
    line: str, where: str, width: int, height: int, num_classes: int, problems: DatasetProblems
) -> Optional[Dict]:
    """
    The annotation of one label line ``class cx cy w h``; None (and an error or
    a note) if there is none.
    """
    fields = line.split()
    if len(fields) != 5:
        hint = " (a segmentation polygon? only boxes are read)" if len(fields) > 5 else ""
        problems.error(where, f"{len(fields)} fields, expected 5: class cx cy w h{hint}")
        return None
    try:
        cls_value = float(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        problems.error(where, f"not numbers: {line.strip()!r}")
        return None
    if cls_value != int(cls_value) or not 0 <= cls_value < num_classes:
        problems.error(
            where,
            f"class {fields[0]} is not one of 0..{num_classes - 1} (the {num_classes} class names)",
        )
        return None
    if not all(math.isfinite(v) and -_EPS <= v <= 1 + _EPS for v in (cx, cy, w, h)):
        problems.error(
            where,
            f"values outside [0, 1]: {line.strip()!r} (YOLO coordinates are divided by the "
            f"image size, {width}x{height})",
        )
        return None
    box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    _, box = BOX_RULES.apply(box, width, height, where, problems)
    return (
        None
        if box is None
        else {
            "bbox": box,
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": int(cls_value),
            "iscrowd": 0,
        }
    )


def _read_labels(
    path: str, width: int, height: int, num_classes: int, problems: DatasetProblems
) -> List[Dict]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not any(line.strip() for line in lines):
        problems.note("images with an empty label file (no objects)", path)
        return []
    annotations = (
        _annotation(line, f"{path}:{lineno}", width, height, num_classes, problems)
        for lineno, line in enumerate(lines, 1)
        if line.split()
    )
    return [a for a in annotations if a is not None]


def read(root: str, split: str) -> FolderDataset:
    """Read ``split`` of the YOLO-layout dataset under ``root`` (all problems reported at once)."""
    problems = DatasetProblems(f"YOLO dataset {root} ({split})")
    classes = class_names(root)
    records = []
    label_files: Dict[str, str] = {}
    for image, where in split_images(root, split, problems):
        try:
            width, height = image_size(image)
        except OSError as e:
            problems.error(where, str(e) if where == image else f"{image}: {e}")
            continue
        labels = label_path(image)
        if labels in label_files:
            problems.error(image, f"shares its label file {labels} with {label_files[labels]}")
            continue
        label_files[labels] = image
        if os.path.isfile(labels):
            annotations = _read_labels(labels, width, height, len(classes), problems)
        else:
            problems.note("images without a label file (no objects)", image)
            annotations = []
        records.append(
            {
                "file_name": image,
                "image_id": os.path.splitext(os.path.relpath(image, root))[0],
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    problems.finish()
    return FolderDataset("yolo", root, split, records, classes, list(range(len(classes))))


def _label_rows(record: Dict) -> str:
    w, h = float(record["width"]), float(record["height"])
    rows = []
    for ann in record["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x0, y0, x1, y1 = box_xyxy(ann)
        rows.append(
            f"{ann['category_id']} {(x0 + x1) / 2 / w:.9f} {(y0 + y1) / 2 / h:.9f} "
            f"{(x1 - x0) / w:.9f} {(y1 - y0) / h:.9f}\n"
        )
    return "".join(rows)


def write(
    root: str,
    split: str,
    records: Sequence[Dict],
    classes: Sequence[str],
    dataset_ids: Optional[Sequence[int]] = None,
) -> str:
    """
    ``images/<split>/``, ``labels/<split>/<image>.txt`` (``class cx cy w h``,
    normalised) and ``data.yaml`` (``names`` and this split's folder); returns
    the yaml's path. YOLO numbers the classes by their order: ``dataset_ids``
    is not used.
    """
    for r in records:
        name = os.path.basename(r["file_name"])
        place_image(r["file_name"], os.path.join(root, "images", split, name))
        label = os.path.join(root, "labels", split, os.path.splitext(name)[0] + ".txt")
        os.makedirs(os.path.dirname(label), exist_ok=True)
        with open(label, "w") as f:
            f.write(_label_rows(r))
    path = os.path.join(root, "data.yaml")
    content = {}
    if os.path.isfile(path):
        with open(path) as f:
            content = yaml.safe_load(f) or {}
    content.update({"path": ".", split: f"images/{split}", "names": list(classes)})
    with open(path, "w") as f:
        yaml.safe_dump(content, f, sort_keys=False)
    return path


FORMAT = DatasetFormat(
    name="yolo",
    expected=f"YOLO (images/<split>/, labels/<split>/ and {YAML_FILES[0]} or {NAME_FILES[0]})",
    detect=detect,
    class_names=class_names,
    read=read,
    write=write,
)
