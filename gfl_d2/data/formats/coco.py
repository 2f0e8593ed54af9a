"""
The COCO layout: one json of COCO's detection format per split and a folder
of images. Read with detectron2's ``load_coco_json`` after the json has been
checked, so that a broken file fails with the entry named; the boxes are kept
as detectron2 loads them (its mapper and the model clip them), and the
category ids of the file are kept for the evaluator.
"""

import glob
import json
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data.datasets.coco import load_coco_json
from detectron2.structures import BoxMode

from ..box_policy import BoxFate, BoxRules, box_xyxy
from ..folder_dataset import FolderDataset, image_size
from ..problems import DatasetError, DatasetProblems
from .base import DatasetFormat, first_file, place_image

__all__ = ["FORMAT", "detect", "class_names", "read", "write", "json_candidates"]

_EMPTY_NOTE = "boxes with zero or negative width/height (not trained on)"
# the boxes stay as they are (detectron2's loader keeps them): only their own shape is judged
BOX_RULES = BoxRules(
    errors={BoxFate.NONFINITE: "non-finite bbox {box}"},
    notes={BoxFate.EMPTY: _EMPTY_NOTE, BoxFate.INVERTED: _EMPTY_NOTE},
)


def json_candidates(root: str, split: str) -> List[str]:
    """Where a split's json may be, in the order looked at."""
    return [
        os.path.join(root, "annotations", f"instances_{split}.json"),
        os.path.join(root, "annotations", f"{split}.json"),
        os.path.join(root, f"{split}.json"),
        os.path.join(root, split, "_annotations.coco.json"),  # Roboflow's export
    ]


def detect(root: str) -> bool:
    patterns = (("annotations", "*.json"), ("*.json",), ("*", "_annotations.coco.json"))
    return any(glob.glob(os.path.join(root, *p)) for p in patterns)


def _split_json(root: str, split: str) -> str:
    json_file = first_file(json_candidates(root, split))
    if json_file is None:
        looked = ", ".join(os.path.relpath(p, root) for p in json_candidates(root, split))
        raise DatasetError(
            f"COCO layout: no json for split {split!r} in {root} (looked for {looked})"
        )
    return json_file


def _load_json(path: str) -> Dict:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None
    if not isinstance(content, dict):
        raise DatasetError(
            f"{path}: not a COCO json (the top level is a {type(content).__name__}, not an object)"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise DatasetError(
                f"{path}: no {key!r} list "
                "(a COCO detection json has images, annotations, categories)"
            )
    return content


def _image_root(root: str, split: str, json_file: str, content: Dict) -> str:
    """The folder the json's file names are relative to: the first that holds its first image."""
    first = next(
        (
            im.get("file_name")
            for im in content["images"]
            if isinstance(im, dict) and im.get("file_name")
        ),
        None,
    )
    roots = [
        os.path.dirname(json_file),
        os.path.join(root, split),
        os.path.join(root, "images", split),
        os.path.join(root, "images"),
        root,
    ]
    image_root = next(
        (r for r in roots if first is None or os.path.isfile(os.path.join(r, first))), None
    )
    if image_root is None:
        looked = ", ".join(sorted({os.path.relpath(r, root) for r in roots}))
        raise DatasetError(
            f"{json_file}: its first image {first!r} is in none of the folders {looked} of {root}"
        )
    return image_root


def _check_categories(json_file: str, content: Dict, problems: DatasetProblems) -> Dict[int, str]:
    """The categories as ``{id: name}``; malformed or repeated entries are errors."""
    categories: Dict[int, str] = {}
    ids: Dict[int, str] = {}
    names: Dict[str, str] = {}
    for i, cat in enumerate(content["categories"]):
        where = f"{json_file}: categories[{i}]"
        if (
            not isinstance(cat, dict)
            or not isinstance(cat.get("id"), int)
            or not isinstance(cat.get("name"), str)
        ):
            problems.error(where, f"needs an integer 'id' and a string 'name', got {cat!r}")
            continue
        new_id = problems.listed_once(
            ids, cat["id"], where, f"category id {cat['id']}", f"categories[{i}]"
        )
        problems.listed_once(
            names, cat["name"], where, f"category name {cat['name']!r}", f"categories[{i}]"
        )
        if new_id:
            categories[cat["id"]] = cat["name"]
    if not categories and not problems.errors:
        problems.error(json_file, "no categories")
    return categories


def _check_images(
    json_file: str, content: Dict, image_root: str, problems: DatasetProblems
) -> Dict[object, str]:
    """
    The image ids (to where they are listed); each image must exist at the size the json gives.
    """
    ids: Dict[object, str] = {}
    file_names: Dict[str, str] = {}
    for i, im in enumerate(content["images"]):
        where = f"{json_file}: images[{i}]"
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            problems.error(where, f"needs an 'id' and a 'file_name', got {im!r}")
            continue
        problems.listed_once(ids, im["id"], where, f"image id {im['id']}", f"images[{i}]")
        problems.listed_once(
            file_names, im["file_name"], where, f"image {im['file_name']!r}", f"images[{i}]"
        )
        path = os.path.join(image_root, im["file_name"])
        try:
            w, h = image_size(path)
        except OSError as e:
            problems.error(where, f"{path}: {e}")
            continue
        if (im.get("width"), im.get("height")) != (w, h):
            problems.error(
                where, f"{path} is {w}x{h} but the json says {im.get('width')}x{im.get('height')}"
            )
    return ids


def _check_annotation(
    ann, where: str, image_ids, categories: Dict[int, str], problems: DatasetProblems
) -> None:
    if ann.get("image_id") not in image_ids:
        problems.error(where, f"image_id {ann.get('image_id')!r} is not in 'images'")
    if ann.get("category_id") not in categories:
        problems.error(
            where,
            f"category_id {ann.get('category_id')!r} is not in 'categories' ({sorted(categories)})",
        )
    if ann.get("ignore", 0):
        problems.error(where, "'ignore' is not supported: mark regions to ignore with iscrowd: 1")
    box = ann.get("bbox")
    if not (
        isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
    ):
        problems.error(where, f"bbox must be 4 numbers [x, y, width, height], got {box!r}")
        return
    x, y, w, h = (float(v) for v in box)
    BOX_RULES.apply([x, y, x + w, y + h], None, None, where, problems, shown=box)


def _check_json(
    json_file: str, content: Dict, image_root: str, problems: DatasetProblems
) -> Dict[int, str]:
    """Check the parts of the json GFL uses; return the categories ``{id: name}``."""
    categories = _check_categories(json_file, content, problems)
    image_ids = _check_images(json_file, content, image_root, problems)
    ann_ids: Dict[object, str] = {}
    for i, ann in enumerate(content["annotations"]):
        where = f"{json_file}: annotations[{i}]" + (
            f" (id {ann.get('id')})" if isinstance(ann, dict) else ""
        )
        if not isinstance(ann, dict):
            problems.error(where, f"not an object: {ann!r}")
            continue
        problems.listed_once(
            ann_ids, ann.get("id"), where, f"annotation id {ann.get('id')}", f"annotations[{i}]"
        )
        _check_annotation(ann, where, image_ids, categories, problems)
    return categories


def class_names(root: str, split: str) -> List[str]:
    """The names of the split json's categories, ordered by their ids."""
    json_file = _split_json(root, split)
    problems = DatasetProblems(json_file)
    categories = _check_categories(json_file, _load_json(json_file), problems)
    problems.raise_errors()
    return [categories[c] for c in sorted(categories)]


def read(root: str, split: str) -> FolderDataset:
    """Read ``split`` of the COCO-layout dataset under ``root`` (all problems reported at once)."""
    json_file = _split_json(root, split)
    content = _load_json(json_file)
    image_root = _image_root(root, split, json_file, content)
    problems = DatasetProblems(json_file)
    categories = _check_json(json_file, content, image_root, problems)
    problems.finish()
    cat_ids = sorted(categories)
    contiguous = {cid: i for i, cid in enumerate(cat_ids)}
    records = load_coco_json(json_file, image_root)
    for r in records:
        for ann in r["annotations"]:
            ann["bbox"] = box_xyxy(ann)
            ann["bbox_mode"] = BoxMode.XYXY_ABS
            ann["category_id"] = contiguous[ann["category_id"]]
            ann.setdefault("iscrowd", 0)
    return FolderDataset(
        "coco", root, split, records, [categories[c] for c in cat_ids], cat_ids, json_file=json_file
    )


def write(
    root: str,
    split: str,
    records: Sequence[Dict],
    classes: Sequence[str],
    dataset_ids: Optional[Sequence[int]] = None,
) -> str:
    """
    ``root/<split>/<image>`` and ``root/annotations/instances_<split>.json``;
    returns the json's path.
    """
    ids = list(dataset_ids) if dataset_ids is not None else list(range(1, len(classes) + 1))
    images, annotations = [], []
    for image_id, r in enumerate(records, 1):
        name = os.path.basename(r["file_name"])
        place_image(r["file_name"], os.path.join(root, split, name))
        images.append(
            {"id": image_id, "file_name": name, "width": r["width"], "height": r["height"]}
        )
        for ann in r["annotations"]:
            x0, y0, x1, y1 = box_xyxy(ann)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[ann["category_id"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(ann.get("iscrowd", 0)),
                }
            )
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    categories = [{"id": i, "name": n} for i, n in zip(ids, classes)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


FORMAT = DatasetFormat(
    name="coco",
    expected="COCO (annotations/<split>.json and images)",
    detect=detect,
    class_names=class_names,
    read=read,
    write=write,
)
