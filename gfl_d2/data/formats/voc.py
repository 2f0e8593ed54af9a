"""
The Pascal VOC layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``
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
from typing import Dict, List, Optional, Sequence, Set, Tuple
from xml.sax.saxutils import escape

from detectron2.structures import BoxMode

from ..box_policy import BoxFate, BoxRules, box_xyxy
from ..folder_dataset import IMAGE_EXTENSIONS, FolderDataset, image_size
from ..problems import DatasetError, DatasetProblems
from .base import DatasetFormat, first_file, image_stem, place_image, read_class_file

__all__ = [
    "FORMAT",
    "detect",
    "class_names",
    "read",
    "write",
    "split_ids",
    "parse_xml_with_lines",
    "CLASS_FILES",
]

CLASS_FILES = ("labels.txt", "classes.txt")
# A box outside its image is an error (the file is wrong); one overhanging it by
# more than a pixel (VOC's corners are whole pixels) is clipped and counted.
BOX_RULES = BoxRules(
    errors={
        BoxFate.INVERTED: "xmax/ymax below xmin/ymin: {box}",
        BoxFate.OUTSIDE: "box {box} lies outside its {width}x{height} image",
    },
    notes={
        BoxFate.CLIPPED: "boxes reaching outside their image (clipped to it)",
        BoxFate.EMPTY: "boxes of zero width or height (dropped)",
    },
    tolerance=1.0,
)
_DIFFICULT_NOTE = (
    "'difficult' objects (ignored regions: not trained on, not counted by the evaluation)"
)


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

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = (
        start,
        end,
        text,
    )
    with open(path, "rb") as f:
        parser.ParseFile(f)
    return roots[0]


def detect(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "Annotations")) and os.path.isdir(
        os.path.join(root, "ImageSets", "Main")
    )


def split_ids(root: str, split: str, problems: DatasetProblems) -> List[str]:
    """The ids listed in ``ImageSets/Main/<split>.txt``; an id listed twice is an error."""
    path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        have = sorted(
            os.path.basename(p)[:-4]
            for p in glob.glob(os.path.join(root, "ImageSets", "Main", "*.txt"))
        )
        raise DatasetError(f"VOC layout: no {path} (splits there: {have or 'none'})")
    ids: List[str] = []
    seen: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if fields and problems.listed_once(
                seen, fields[0], f"{path}:{lineno}", f"image {fields[0]!r}", f"line {lineno}"
            ):
                ids.append(fields[0])
    if not ids:
        raise DatasetError(f"{path}: lists no images")
    return ids


def _class_file(root: str) -> Optional[str]:
    return first_file(os.path.join(root, n) for n in CLASS_FILES)


def _object_names(xml_path: str) -> Set[str]:
    try:
        tree = parse_xml_with_lines(xml_path)
    except (OSError, xml.parsers.expat.ExpatError):
        return set()  # reported when the split is read
    return {obj.findtext("name", "") for obj in tree.findall("object")}


def class_names(root: str, split: Optional[str] = None) -> List[str]:
    """
    The class file's names, else every object name of the annotations the split files list, sorted.
    """
    path = _class_file(root)
    if path is not None:
        return read_class_file(path)
    names: Set[str] = set()
    for split_file in glob.glob(os.path.join(root, "ImageSets", "Main", "*.txt")):
        name = os.path.basename(split_file)[:-4]
        if "_" in name:  # VOC's per-class lists (aeroplane_train.txt): the same images
            continue
        for image_id in split_ids(root, name, DatasetProblems(split_file)):
            names |= _object_names(os.path.join(root, "Annotations", f"{image_id}.xml"))
    names.discard("")
    if not names:
        raise DatasetError(
            f"VOC layout: no object names in the annotations of {root} "
            f"and no {' or '.join(CLASS_FILES)}"
        )
    return sorted(names)


def _parse_annotation(
    xml_path: str, image_id: str, split: str, problems: DatasetProblems
) -> Optional[_Node]:
    if not os.path.isfile(xml_path):
        problems.error(
            xml_path, f"annotation file of image {image_id!r} (listed in {split}.txt) not found"
        )
        return None
    try:
        return parse_xml_with_lines(xml_path)
    except xml.parsers.expat.ExpatError as e:
        problems.error(
            f"{xml_path}:{e.lineno}", f"not valid XML ({xml.parsers.expat.ErrorString(e.code)})"
        )
    except OSError as e:
        problems.error(xml_path, f"cannot be read ({e})")
    return None


def _declared_size(tree: _Node) -> Tuple[Optional[_Node], Optional[Tuple[int, int]]]:
    """
    The ``<size>`` node (None if it gives no width and height) and its
    ``(width, height)`` (None: not numbers).
    """
    size = tree.find("size")
    if size is None or not size.findtext("width") or not size.findtext("height"):
        return None, None
    try:
        return size, (int(float(size.findtext("width"))), int(float(size.findtext("height"))))
    except ValueError:
        return size, None


def _image(
    root: str, image_id: str, tree: _Node, xml_path: str, problems: DatasetProblems
) -> Optional[Tuple[str, int, int]]:
    """
    ``(path, width, height)`` of the image of ``xml_path``, checked against its
    ``<size>``; None if a problem.
    """
    folder = os.path.join(root, "JPEGImages")
    looked = [os.path.join(folder, image_id + ext) for ext in IMAGE_EXTENSIONS]
    if tree.findtext("filename"):
        looked.append(os.path.join(folder, tree.findtext("filename")))
    path = first_file(looked)
    if path is None:
        names = ", ".join(os.path.basename(p) for p in looked[:3])
        problems.error(xml_path, f"its image is missing (looked for {names}, ... in JPEGImages)")
        return None
    try:
        width, height = image_size(path)
    except OSError as e:
        problems.error(path, str(e))
        return None
    size, declared = _declared_size(tree)
    if size is not None and declared != (width, height):
        problems.error(
            f"{xml_path}:{size.line}", f"<size> says {declared} but {path} is {width}x{height}"
        )
        return None
    return path, width, height


def _box_values(obj: _Node, xml_path: str, problems: DatasetProblems) -> Optional[List[float]]:
    """
    ``[xmin, ymin, xmax, ymax]`` as the file has them; None (and an error) if
    one is missing or not a number.
    """
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


def _annotations(
    tree: _Node,
    xml_path: str,
    width: int,
    height: int,
    index: Dict[str, int],
    source: str,
    problems: DatasetProblems,
) -> List[Dict]:
    """
    The objects of one annotation file as detectron2 annotations (``index``:
    class name -> contiguous id).
    """
    annotations = []
    for obj in tree.findall("object"):
        where, name = f"{xml_path}:{obj.line}", obj.findtext("name", "")
        if name not in index:
            problems.error(
                where, f"unknown class name {name!r} (the classes, from {source}: {list(index)})"
            )
            continue
        values = _box_values(obj, xml_path, problems)
        if values is None:
            continue
        # 1-based pixel indices: (xmin=1, xmax=W) spans the image, (0, W) in coordinates
        _, box = BOX_RULES.apply(
            [values[0] - 1.0, values[1] - 1.0, values[2], values[3]],
            width,
            height,
            where,
            problems,
            shown=values,
        )
        if box is None:
            continue
        difficult = obj.findtext("difficult", "0") in ("1", "true", "True")
        if difficult:
            problems.note(_DIFFICULT_NOTE)
        annotations.append(
            {
                "bbox": box,
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": index[name],
                "iscrowd": int(difficult),
            }
        )
    if not tree.findall("object"):
        problems.note("images without objects")
    return annotations


def read(root: str, split: str) -> FolderDataset:
    """Read ``split`` of the VOC-layout dataset under ``root`` (all problems reported at once)."""
    problems = DatasetProblems(f"VOC dataset {root} ({split})")
    classes = class_names(root)
    index = {n: i for i, n in enumerate(classes)}
    source = _class_file(root) or "the annotations' names"
    records = []
    for image_id in split_ids(root, split, problems):
        xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
        tree = _parse_annotation(xml_path, image_id, split, problems)
        image = None if tree is None else _image(root, image_id, tree, xml_path, problems)
        if image is None:
            continue
        path, width, height = image
        annotations = _annotations(tree, xml_path, width, height, index, source, problems)
        records.append(
            {
                "file_name": path,
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    problems.finish()
    return FolderDataset("voc", root, split, records, classes, list(range(len(classes))))


def _xml(record: Dict, classes: Sequence[str]) -> str:
    """The annotation file of ``record``: VOC's 1-based corners, written as floats."""
    objects = []
    for ann in record["annotations"]:
        x0, y0, x1, y1 = box_xyxy(ann)
        objects.append(
            f"  <object>\n    <name>{escape(classes[ann['category_id']])}</name>\n"
            f"    <difficult>{int(ann.get('iscrowd', 0))}</difficult>\n    <bndbox>\n"
            f"      <xmin>{x0 + 1:.6f}</xmin>\n      <ymin>{y0 + 1:.6f}</ymin>\n"
            f"      <xmax>{x1:.6f}</xmax>\n      <ymax>{y1:.6f}</ymax>\n"
            "    </bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <filename>{escape(os.path.basename(record['file_name']))}</filename>\n"
        f"  <size>\n    <width>{record['width']}</width>\n    <height>{record['height']}</height>\n"
        f"    <depth>3</depth>\n  </size>\n{''.join(objects)}</annotation>\n"
    )


def write(
    root: str,
    split: str,
    records: Sequence[Dict],
    classes: Sequence[str],
    dataset_ids: Optional[Sequence[int]] = None,
) -> str:
    """
    ``JPEGImages/``, ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``
    and ``labels.txt``; returns the split file. VOC numbers the classes by
    their order: ``dataset_ids`` is not used.
    """
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    for r in records:
        place_image(
            r["file_name"], os.path.join(root, "JPEGImages", os.path.basename(r["file_name"]))
        )
        with open(os.path.join(root, "Annotations", f"{image_stem(r)}.xml"), "w") as f:
            f.write(_xml(r, classes))
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    os.makedirs(os.path.dirname(split_file), exist_ok=True)
    with open(split_file, "w") as f:
        f.write("\n".join(image_stem(r) for r in records) + "\n")
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    return split_file


FORMAT = DatasetFormat(
    name="voc",
    expected="Pascal VOC (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)",
    detect=detect,
    class_names=class_names,
    read=read,
    write=write,
)
