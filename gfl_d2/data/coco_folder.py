"""
A COCO-layout dataset: one json of COCO's detection format per split and a
folder of images. Read with detectron2's ``load_coco_json`` after the json has
been checked, so that a broken file fails with the entry named.
"""
import json
import math
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data.datasets.coco import load_coco_json
from detectron2.structures import BoxMode

from .folder_dataset import FolderDataset, image_size
from .validation import DatasetError, DatasetProblems

__all__ = ["find_coco_split", "read_coco_split", "coco_json_candidates"]


def coco_json_candidates(root: str, split: str) -> List[str]:
    """Where a split's json may be, in the order looked at."""
    return [
        os.path.join(root, "annotations", f"instances_{split}.json"),
        os.path.join(root, "annotations", f"{split}.json"),
        os.path.join(root, f"{split}.json"),
        os.path.join(root, split, "_annotations.coco.json"),  # Roboflow's export
    ]


def _image_root_candidates(root: str, split: str) -> List[str]:
    return [os.path.join(root, split), os.path.join(root, "images", split), os.path.join(root, "images"), root]


def find_coco_split(root: str, split: str) -> Tuple[str, str, Dict]:
    """``(json_file, image_root, parsed json)`` of ``split`` under ``root``; DatasetError if absent."""
    json_file = next((p for p in coco_json_candidates(root, split) if os.path.isfile(p)), None)
    if json_file is None:
        looked = ", ".join(os.path.relpath(p, root) for p in coco_json_candidates(root, split))
        raise DatasetError(f"COCO layout: no json for split {split!r} in {root} (looked for {looked})")
    content = _load_json(json_file)
    images = content.get("images") or []
    first = next((im.get("file_name") for im in images if isinstance(im, dict) and im.get("file_name")), None)
    roots = [os.path.dirname(json_file)] + _image_root_candidates(root, split)
    image_root = next((r for r in roots if first is None or os.path.isfile(os.path.join(r, first))), None)
    if image_root is None:
        looked = ", ".join(sorted({os.path.relpath(r, root) for r in roots}))
        raise DatasetError(f"{json_file}: its first image {first!r} is in none of the folders {looked} of {root}")
    return json_file, image_root, content


def _load_json(path: str) -> Dict:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: not a COCO json (the top level is a {type(content).__name__}, not an object)")
    return content


def _check_coco_json(json_file: str, content: Dict, image_root: str, problems: DatasetProblems) -> List[int]:
    """Check the parts of the json GFL uses; return the category ids, sorted."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise DatasetError(f"{json_file}: no {key!r} list (a COCO detection json has images, annotations, categories)")
    categories: Dict[int, str] = {}
    names: Dict[str, int] = {}
    for i, cat in enumerate(content["categories"]):
        where = f"{json_file}: categories[{i}]"
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            problems.error(where, f"needs an integer 'id' and a string 'name', got {cat!r}")
            continue
        if cat["id"] in categories:
            problems.error(where, f"category id {cat['id']} listed twice")
        if cat["name"] in names:
            problems.error(where, f"category name {cat['name']!r} listed twice (ids {names[cat['name']]} and {cat['id']})")
        categories[cat["id"]] = cat["name"]
        names[cat["name"]] = cat["id"]
    if not categories and not problems.errors:
        problems.error(json_file, "no categories")

    image_ids: Dict[int, int] = {}
    file_names: Dict[str, int] = {}
    for i, im in enumerate(content["images"]):
        where = f"{json_file}: images[{i}]"
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            problems.error(where, f"needs an 'id' and a 'file_name', got {im!r}")
            continue
        if im["id"] in image_ids:
            problems.error(where, f"image id {im['id']} listed twice (also images[{image_ids[im['id']]}])")
        if im["file_name"] in file_names:
            problems.error(where, f"image {im['file_name']!r} listed twice (also images[{file_names[im['file_name']]}])")
        image_ids[im["id"]] = i
        file_names[im["file_name"]] = i
        path = os.path.join(image_root, im["file_name"])
        try:
            w, h = image_size(path)
        except OSError as e:
            problems.error(where, f"{path}: {e}")
            continue
        if (im.get("width"), im.get("height")) != (w, h):
            problems.error(where, f"{path} is {w}x{h} but the json says {im.get('width')}x{im.get('height')}")

    ann_ids = set()
    for i, ann in enumerate(content["annotations"]):
        where = f"{json_file}: annotations[{i}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) else "")
        if not isinstance(ann, dict):
            problems.error(where, f"not an object: {ann!r}")
            continue
        if ann.get("id") in ann_ids:
            problems.error(where, f"annotation id {ann.get('id')} listed twice")
        ann_ids.add(ann.get("id"))
        if ann.get("image_id") not in image_ids:
            problems.error(where, f"image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in categories:
            problems.error(where, f"category_id {ann.get('category_id')!r} is not in 'categories' ({sorted(categories)})")
        if ann.get("ignore", 0):
            problems.error(where, "'ignore' is not supported: mark regions to ignore with iscrowd: 1")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            problems.error(where, f"bbox must be 4 numbers [x, y, width, height], got {box!r}")
        elif not all(math.isfinite(v) for v in box):
            problems.error(where, f"non-finite bbox {box}")
        elif box[2] <= 0 or box[3] <= 0:
            problems.note("boxes with zero or negative width/height (not trained on)", where)
    return sorted(categories)


def read_coco_split(root: str, split: str, found: Optional[Tuple[str, str, Dict]] = None) -> FolderDataset:
    """Read ``split`` of the COCO-layout dataset under ``root`` (all problems reported at once)."""
    json_file, image_root, content = found or find_coco_split(root, split)
    problems = DatasetProblems(json_file)
    cat_ids = _check_coco_json(json_file, content, image_root, problems)
    problems.raise_errors()
    problems.log_notes()
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    names = {c["id"]: c["name"] for c in content["categories"]}
    records = load_coco_json(json_file, image_root)
    for r in records:
        for ann in r["annotations"]:
            ann["bbox"] = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
            ann["bbox_mode"] = BoxMode.XYXY_ABS
            ann["category_id"] = id_map[ann["category_id"]]
            ann.setdefault("iscrowd", 0)
    return FolderDataset(
        "coco", root, split, records, [names[c] for c in cat_ids], cat_ids, json_file=json_file
    )
