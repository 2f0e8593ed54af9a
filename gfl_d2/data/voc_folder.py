"""
A Pascal VOC-layout dataset: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``
(other image extensions too) and ``ImageSets/Main/<split>.txt`` listing the
ids of a split.

Boxes follow VOC's convention as detectron2's own VOC loader reads it:
1-based pixel indices, so ``xmin``/``ymin`` move by -1. Coordinates may be
floats. ``difficult`` objects become ``iscrowd`` regions: not trained on, and
ignored by the evaluation, which is what VOC defines them to be. Class names
are those of ``labels.txt`` / ``classes.txt`` in the root, one per line, if
present (then another name is an error), else every name the split files'
annotations use, sorted.
"""
import glob
import os
import xml.parsers.expat
from typing import Dict, List, Optional, Tuple

from detectron2.structures import BoxMode

from .folder_dataset import IMAGE_EXTENSIONS, FolderDataset, image_size
from .validation import DatasetError, DatasetProblems

__all__ = ["read_voc_split", "voc_class_names", "voc_split_ids", "parse_xml_with_lines", "CLASS_FILES"]

CLASS_FILES = ("labels.txt", "classes.txt")
# a box may overhang its image by this much (px) before it counts as clipped
_OVERHANG_TOLERANCE = 1.0


class _Node:
    __slots__ = ("tag", "line", "children", "text")

    def __init__(self, tag: str, line: int):
        self.tag, self.line, self.children, self.text = tag, line, [], ""

    def find(self, tag: str) -> Optional["_Node"]:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> List["_Node"]:
        return [c for c in self.children if c.tag == tag]

    def findtext(self, tag: str, default: Optional[str] = None) -> Optional[str]:
        node = self.find(tag)
        return node.text.strip() if node is not None else default


def parse_xml_with_lines(path: str) -> _Node:
    """A minimal element tree of ``path`` whose nodes know their line (for error messages)."""
    parser = xml.parsers.expat.ParserCreate()
    stack: List[_Node] = []
    roots: List[_Node] = []

    def start(tag, attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(tag):
        stack.pop()

    def text(data):
        if stack:
            stack[-1].text += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    with open(path, "rb") as f:
        parser.ParseFile(f)
    return roots[0]


def voc_split_ids(root: str, split: str, problems: DatasetProblems) -> List[str]:
    """The ids listed in ``ImageSets/Main/<split>.txt``; an id listed twice is an error."""
    path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        have = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(root, "ImageSets", "Main", "*.txt")))
        raise DatasetError(f"VOC layout: no {path} (splits there: {have or 'none'})")
    ids: List[str] = []
    seen: Dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            image_id = fields[0]
            if image_id in seen:
                problems.error(f"{path}:{lineno}", f"image {image_id!r} listed twice (also line {seen[image_id]})")
                continue
            seen[image_id] = lineno
            ids.append(image_id)
    if not ids:
        raise DatasetError(f"{path}: lists no images")
    return ids


def _class_file(root: str) -> Optional[str]:
    return next((os.path.join(root, n) for n in CLASS_FILES if os.path.isfile(os.path.join(root, n))), None)


def voc_class_names(root: str) -> List[str]:
    """The class names: the class file's, else every object name of the annotations the split files list, sorted."""
    path = _class_file(root)
    if path is not None:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DatasetError(f"{path}: class names listed twice: {dup}")
        if not names:
            raise DatasetError(f"{path}: names no classes")
        return names
    names = set()
    for split_file in glob.glob(os.path.join(root, "ImageSets", "Main", "*.txt")):
        split = os.path.basename(split_file)[:-4]
        if "_" in split:  # VOC's per-class lists (aeroplane_train.txt): the same images
            continue
        for image_id in voc_split_ids(root, split, DatasetProblems(split_file)):
            xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
            try:
                tree = parse_xml_with_lines(xml_path)
            except (OSError, xml.parsers.expat.ExpatError):
                continue  # reported when the split is read
            names.update(obj.findtext("name", "") for obj in tree.findall("object"))
    names.discard("")
    if not names:
        raise DatasetError(f"VOC layout: no object names in the annotations of {root} and no {' or '.join(CLASS_FILES)}")
    return sorted(names)


def _find_image(root: str, image_id: str, filename: Optional[str]) -> Tuple[Optional[str], List[str]]:
    folder = os.path.join(root, "JPEGImages")
    candidates = [os.path.join(folder, image_id + ext) for ext in IMAGE_EXTENSIONS]
    if filename:
        candidates.append(os.path.join(folder, filename))
    return next((p for p in candidates if os.path.isfile(p)), None), candidates


def _read_box(obj, xml_path: str, problems: DatasetProblems) -> Optional[List[float]]:
    box = obj.find("bndbox")
    if box is None:
        problems.error(f"{xml_path}:{obj.line}", "object has no <bndbox>")
        return None
    values = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        node = box.find(tag)
        where = f"{xml_path}:{(node or box).line}"
        if node is None:
            problems.error(where, f"<bndbox> has no <{tag}>")
            return None
        try:
            values.append(float(node.text.strip()))
        except ValueError:
            problems.error(where, f"<{tag}> is not a number: {node.text.strip()!r}")
            return None
    return values


def read_voc_split(root: str, split: str, classes: Optional[List[str]] = None) -> FolderDataset:
    """Read ``split`` of the VOC-layout dataset under ``root`` (all problems reported at once)."""
    problems = DatasetProblems(f"VOC dataset {root} ({split})")
    classes = classes or voc_class_names(root)
    index = {n: i for i, n in enumerate(classes)}
    source = _class_file(root) or "the annotations' names"
    records = []
    for image_id in voc_split_ids(root, split, problems):
        xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
        if not os.path.isfile(xml_path):
            problems.error(xml_path, f"annotation file of image {image_id!r} (listed in {split}.txt) not found")
            continue
        try:
            tree = parse_xml_with_lines(xml_path)
        except xml.parsers.expat.ExpatError as e:
            problems.error(f"{xml_path}:{e.lineno}", f"not valid XML ({xml.parsers.expat.ErrorString(e.code)})")
            continue
        except OSError as e:
            problems.error(xml_path, f"cannot be read ({e})")
            continue
        image_path, looked = _find_image(root, image_id, tree.findtext("filename"))
        if image_path is None:
            problems.error(xml_path, f"its image is missing (looked for {', '.join(os.path.basename(p) for p in looked[:3])}, ... in JPEGImages)")
            continue
        try:
            width, height = image_size(image_path)
        except OSError as e:
            problems.error(image_path, str(e))
            continue
        size = tree.find("size")
        if size is not None and size.findtext("width") and size.findtext("height"):
            try:
                declared = (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
            except ValueError:
                declared = None
            if declared != (width, height):
                problems.error(f"{xml_path}:{size.line}", f"<size> says {declared} but {image_path} is {width}x{height}")
                continue
        annotations = []
        for obj in tree.findall("object"):
            where = f"{xml_path}:{obj.line}"
            name = obj.findtext("name", "")
            if name not in index:
                problems.error(where, f"unknown class name {name!r} (the classes, from {source}: {classes})")
                continue
            box = _read_box(obj, xml_path, problems)
            if box is None:
                continue
            x0, y0, x1, y1 = box[0] - 1.0, box[1] - 1.0, box[2], box[3]
            if x1 < x0 or y1 < y0:
                problems.error(where, f"xmax/ymax below xmin/ymin: {box}")
                continue
            if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
                problems.error(where, f"box {box} lies outside its {width}x{height} image")
                continue
            if x0 < -_OVERHANG_TOLERANCE or y0 < -_OVERHANG_TOLERANCE or x1 > width + _OVERHANG_TOLERANCE \
                    or y1 > height + _OVERHANG_TOLERANCE:
                problems.note("boxes reaching outside their image (clipped to it)", where)
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                problems.note("boxes of zero width or height (dropped)", where)
                continue
            difficult = obj.findtext("difficult", "0") in ("1", "true", "True")
            if difficult:
                problems.note("'difficult' objects (ignored regions: not trained on, not counted by the evaluation)")
            annotations.append(
                {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": index[name],
                 "iscrowd": int(difficult)}
            )
        if not tree.findall("object"):
            problems.note("images without objects")
        records.append(
            {"file_name": image_path, "image_id": image_id, "height": height, "width": width, "annotations": annotations}
        )
    problems.raise_errors()
    problems.log_notes()
    return FolderDataset("voc", root, split, records, list(classes), list(range(len(classes))))
