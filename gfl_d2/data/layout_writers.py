"""
Write detectron2 dataset dicts as a dataset folder of one of the three layouts
the project reads (:mod:`gfl_d2.data.folders`): for tests and for generated
datasets, and to move a registered dataset into another tool's format.

The records' boxes must be XYXY_ABS with contiguous ``category_id``;
``iscrowd`` objects become ``iscrowd`` annotations (COCO) or ``difficult``
objects (VOC); YOLO has no notion of them, so they are left out there.
Images are hard-linked where possible, else copied.
"""
import json
import os
import shutil
from typing import Dict, List, Optional, Sequence
from xml.sax.saxutils import escape

import yaml

from detectron2.structures import BoxMode

__all__ = ["write_coco", "write_voc", "write_yolo", "write_layout"]


def _xyxy(ann: Dict) -> List[float]:
    return BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)


def _place(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _stem(record: Dict) -> str:
    return os.path.splitext(os.path.basename(record["file_name"]))[0]


def write_coco(root: str, split: str, records: Sequence[Dict], classes: Sequence[str],
               dataset_ids: Optional[Sequence[int]] = None) -> str:
    """``root/<split>/<image>`` and ``root/annotations/instances_<split>.json``; returns the json's path."""
    ids = list(dataset_ids) if dataset_ids is not None else list(range(1, len(classes) + 1))
    images, annotations = [], []
    for image_id, r in enumerate(records, 1):
        name = os.path.basename(r["file_name"])
        _place(r["file_name"], os.path.join(root, split, name))
        images.append({"id": image_id, "file_name": name, "width": r["width"], "height": r["height"]})
        for ann in r["annotations"]:
            x0, y0, x1, y1 = _xyxy(ann)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": ids[ann["category_id"]],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "iscrowd": int(ann.get("iscrowd", 0)),
            })
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    categories = [{"id": i, "name": n} for i, n in zip(ids, classes)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def write_voc(root: str, split: str, records: Sequence[Dict], classes: Sequence[str]) -> str:
    """
    ``JPEGImages/``, ``Annotations/<id>.xml`` (VOC's 1-based corners, written
    as floats), ``ImageSets/Main/<split>.txt`` and ``labels.txt``; returns the split file.
    """
    lines = []
    for r in records:
        stem = _stem(r)
        _place(r["file_name"], os.path.join(root, "JPEGImages", os.path.basename(r["file_name"])))
        objects = []
        for ann in r["annotations"]:
            x0, y0, x1, y1 = _xyxy(ann)
            objects.append(
                f"  <object>\n    <name>{escape(classes[ann['category_id']])}</name>\n"
                f"    <difficult>{int(ann.get('iscrowd', 0))}</difficult>\n    <bndbox>\n"
                f"      <xmin>{x0 + 1:.6f}</xmin>\n      <ymin>{y0 + 1:.6f}</ymin>\n"
                f"      <xmax>{x1:.6f}</xmax>\n      <ymax>{y1:.6f}</ymax>\n    </bndbox>\n  </object>\n"
            )
        xml = (
            f"<annotation>\n  <filename>{escape(os.path.basename(r['file_name']))}</filename>\n"
            f"  <size>\n    <width>{r['width']}</width>\n    <height>{r['height']}</height>\n"
            f"    <depth>3</depth>\n  </size>\n{''.join(objects)}</annotation>\n"
        )
        os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
        with open(os.path.join(root, "Annotations", f"{stem}.xml"), "w") as f:
            f.write(xml)
        lines.append(stem)
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    os.makedirs(os.path.dirname(split_file), exist_ok=True)
    with open(split_file, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    return split_file


def write_yolo(root: str, split: str, records: Sequence[Dict], classes: Sequence[str]) -> str:
    """
    ``images/<split>/``, ``labels/<split>/<image>.txt`` (``class cx cy w h``,
    normalised) and ``data.yaml`` (``names`` and this split's folder); returns the yaml's path.
    ``iscrowd`` objects are left out: YOLO labels cannot mark a region as ignored.
    """
    for r in records:
        name = os.path.basename(r["file_name"])
        _place(r["file_name"], os.path.join(root, "images", split, name))
        w, h = float(r["width"]), float(r["height"])
        rows = []
        for ann in r["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            x0, y0, x1, y1 = _xyxy(ann)
            rows.append(f"{ann['category_id']} {(x0 + x1) / 2 / w:.9f} {(y0 + y1) / 2 / h:.9f} "
                        f"{(x1 - x0) / w:.9f} {(y1 - y0) / h:.9f}")
        label = os.path.join(root, "labels", split, os.path.splitext(name)[0] + ".txt")
        os.makedirs(os.path.dirname(label), exist_ok=True)
        with open(label, "w") as f:
            f.write("".join(row + "\n" for row in rows))
    path = os.path.join(root, "data.yaml")
    content = {}
    if os.path.isfile(path):
        with open(path) as f:
            content = yaml.safe_load(f) or {}
    content.update({"path": ".", split: f"images/{split}", "names": list(classes)})
    with open(path, "w") as f:
        yaml.safe_dump(content, f, sort_keys=False)
    return path


def write_layout(layout: str, root: str, split: str, records: Sequence[Dict], classes: Sequence[str],
                 dataset_ids: Optional[Sequence[int]] = None) -> str:
    """Write one split in ``layout`` ("coco", "voc", "yolo"); the category ids are used by COCO only."""
    if layout == "coco":
        return write_coco(root, split, records, classes, dataset_ids)
    if layout == "voc":
        return write_voc(root, split, records, classes)
    if layout == "yolo":
        return write_yolo(root, split, records, classes)
    raise ValueError(f"unknown layout {layout!r}: coco, voc or yolo")
