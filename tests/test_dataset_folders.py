"""
Dataset folders in the three layouts (COCO, Pascal VOC, YOLO): the same
objects written in each read back to the same detectron2 dataset dicts, the
layout is detected, and bad data fails with the file and line named (or is
counted in the log when it is handled).
"""

import json
import logging
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from gfl_d2.data import (
    DatasetError,
    detect_layout,
    read_dataset_folder,
    register_dataset,
    write_layout,
)
from gfl_studies.bars import BARS_CLASSES, BARS_IDS, BarsConfig, generate_bars_split

LAYOUTS = ("coco", "voc", "yolo")
SMALL = BarsConfig(min_width=64, max_width=120, min_height=48, max_height=90, max_objects=5)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def gfl_log():
    """The messages logged by gfl_d2's loggers (which the entry points may set not to propagate)."""
    handler = _Records()
    logger = logging.getLogger("gfl_d2")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """Generated images and records (non-square, varied sizes, empty images, float boxes)."""
    base = tmp_path_factory.mktemp("bars")
    records = generate_bars_split(str(base / "rendered"), "train", 12, seed=3, cfg=SMALL)
    # a crowd (VOC: difficult) object in the first image with objects
    first = next(r for r in records if r["annotations"])
    first["annotations"].append(dict(first["annotations"][0], iscrowd=1))
    return base, records


@pytest.fixture(scope="module")
def folders(objects):
    base, records = objects
    out = {}
    for layout in LAYOUTS:
        root = base / layout
        write_layout(layout, str(root), "train", records, BARS_CLASSES, BARS_IDS)
        write_layout(layout, str(root), "val", records[:4], BARS_CLASSES, BARS_IDS)
        out[layout] = str(root)
    return out


def _boxes(record, crowd=False):
    return [
        (a["category_id"], a["bbox"])
        for a in record["annotations"]
        if bool(a.get("iscrowd", 0)) == crowd
    ]


def test_three_layouts_read_to_the_same_dataset_dicts(objects, folders):
    _, records = objects
    read = {layout: read_dataset_folder(folders[layout], "train") for layout in LAYOUTS}
    for layout, data in read.items():
        assert detect_layout(folders[layout]) == layout
        assert data.classes == BARS_CLASSES
        assert len(data.records) == len(records)
        for want, got in zip(records, data.records):
            assert (got["width"], got["height"]) == (want["width"], want["height"])
            assert os.path.basename(got["file_name"]) == os.path.basename(want["file_name"])
            assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in got["annotations"])
            exp, act = _boxes(want), _boxes(got)
            assert [c for c, _ in act] == [c for c, _ in exp]
            if exp:
                np.testing.assert_allclose([b for _, b in act], [b for _, b in exp], atol=1e-3)
    # COCO keeps its own (non-contiguous) ids for the evaluator; VOC/YOLO number the classes
    assert read["coco"].dataset_ids == BARS_IDS and read["voc"].dataset_ids == [0, 1, 2, 3]
    # an ignored region: COCO iscrowd and VOC difficult both read as iscrowd; YOLO cannot express it
    crowd = {
        layout: sum(len(_boxes(r, crowd=True)) for r in read[layout].records) for layout in LAYOUTS
    }
    assert crowd == {"coco": 1, "voc": 1, "yolo": 0}
    assert any(not r["annotations"] for r in read["voc"].records), (
        "some generated images have no objects"
    )
    assert len({(r["width"], r["height"]) for r in records}) > 3 and any(
        r["width"] != r["height"] for r in records
    )


def test_registration_sets_classes_and_evaluator_metadata(folders):
    names = {layout: register_dataset(folders[layout], "val") for layout in LAYOUTS}
    for layout, name in names.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == BARS_CLASSES and meta.evaluator_type == "coco"
        assert register_dataset(folders[layout], "val") == name  # registering again: the same name
        assert len(DatasetCatalog.get(name)) == 4
    coco = MetadataCatalog.get(names["coco"])
    assert coco.json_file.endswith("instances_val.json")
    assert coco.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2, 20: 3}
    assert not hasattr(MetadataCatalog.get(names["voc"]), "json_file")  # COCOEvaluator converts it


def test_layout_detection_errors(tmp_path, folders):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        detect_layout(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        detect_layout(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="unknown dataset layout 'pascal'"):
        read_dataset_folder(folders["voc"], "train", layout="pascal")
    with pytest.raises(DatasetError, match=r"splits there: \['train', 'val'\]"):
        read_dataset_folder(folders["voc"], "test")
    # the layout can be given instead of detected
    assert read_dataset_folder(folders["yolo"], "val", layout="yolo").layout == "yolo"


def test_format_registry_is_the_one_dispatch_point(tmp_path, objects):
    from gfl_d2.data import DATASET_FORMATS, LAYOUTS, get_format

    assert tuple(DATASET_FORMATS) == LAYOUTS == ("coco", "voc", "yolo")
    for name, fmt in DATASET_FORMATS.items():
        assert fmt.name == name and get_format(name.upper()) is fmt
        assert all(callable(f) for f in (fmt.detect, fmt.class_names, fmt.read, fmt.write))
    with pytest.raises(
        DatasetError, match=r"unknown dataset layout 'pascal': one of coco, voc, yolo$"
    ):
        get_format("pascal")
    _, records = objects
    with pytest.raises(
        DatasetError, match=r"unknown dataset layout 'kitti': one of coco, voc, yolo$"
    ):
        write_layout("kitti", str(tmp_path / "k"), "train", records, BARS_CLASSES)
    assert not (tmp_path / "k").exists()


def test_each_format_detects_and_names_the_classes_of_what_it_writes(tmp_path, objects):
    from gfl_d2.data import DATASET_FORMATS

    _, records = objects
    for name, fmt in DATASET_FORMATS.items():
        root = str(tmp_path / name)
        fmt.write(root, "train", records[:3], BARS_CLASSES, BARS_IDS)
        assert [n for n, f in DATASET_FORMATS.items() if f.detect(root)] == [name]
        assert fmt.class_names(root, "train") == BARS_CLASSES
        assert fmt.read(root, "train").layout == name


# ---- bad data: the file and line are named; handled cases are counted ----


def _yolo(tmp_path, labels, names="a\nb\n", images=("x.png",)):
    from PIL import Image

    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for name in images:
        Image.new("RGB", (100, 50)).save(root / "images" / "train" / name)
    for stem, text in labels.items():
        (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "classes.txt").write_text(names)
    return root


def test_yolo_bad_lines_are_named(tmp_path):
    root = _yolo(
        tmp_path,
        {"x": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n2 0.5 0.5 0.1 0.1\n0 50 25 10 10\n0 a b c d\n"},
    )
    with pytest.raises(DatasetError) as e:
        read_dataset_folder(str(root), "train")
    msg = str(e.value)
    label = str(root / "labels" / "train" / "x.txt")
    assert "4 problem(s)" in msg
    assert f"{label}:2: 4 fields, expected 5" in msg
    assert f"{label}:3: class 2 is not one of 0..1" in msg
    assert f"{label}:4: values outside [0, 1]" in msg
    assert f"{label}:5: not numbers" in msg


def test_yolo_counts_empty_and_missing_label_files_and_floats_fine(tmp_path, gfl_log):
    root = _yolo(
        tmp_path, {"x": "1 0.25 0.5 0.1 0.3\n", "y": ""}, images=("x.png", "y.png", "z.png")
    )
    data = read_dataset_folder(str(root), "train")
    assert [len(r["annotations"]) for r in data.records] == [1, 0, 0]
    np.testing.assert_allclose(data.records[0]["annotations"][0]["bbox"], [20.0, 17.5, 30.0, 32.5])
    log = "\n".join(gfl_log)
    assert "1 images with an empty label file" in log and "1 images without a label file" in log


def test_yolo_missing_class_names_and_duplicate_listing(tmp_path):
    root = _yolo(tmp_path, {"x": "0 0.5 0.5 0.2 0.2\n"}, names=None)
    with pytest.raises(DatasetError, match="no class names .*data.yaml.*classes.txt"):
        read_dataset_folder(str(root), "train", layout="yolo")
    (root / "data.yaml").write_text("names: [a, b]\ntrain: train.txt\n")
    (root / "train.txt").write_text(
        "images/train/x.png\nimages/train/x.png\nimages/train/gone.png\n"
    )
    with pytest.raises(DatasetError) as e:
        read_dataset_folder(str(root), "train")
    assert (
        f"{root / 'train.txt'}:2: image {root / 'images' / 'train' / 'x.png'} listed twice"
        in str(e.value)
    )
    assert "gone.png: image file not found" in str(e.value)


def _voc(tmp_path, objects_xml, size=(100, 50), classes="cat\ndog\n", ids=("a",)):
    from PIL import Image

    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id in set(ids):
        Image.new("RGB", size).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation>\n<size><width>{size[0]}</width><height>{size[1]}</height></size>\n{objects_xml}</annotation>\n"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    if classes is not None:
        (root / "labels.txt").write_text(classes)
    return root


def _obj(name, box, difficult=0):
    x0, y0, x1, y1 = box
    return (
        f"<object>\n<name>{name}</name>\n<difficult>{difficult}</difficult>\n<bndbox>\n<xmin>{x0}</xmin>\n"
        f"<ymin>{y0}</ymin>\n<xmax>{x1}</xmax>\n<ymax>{y1}</ymax>\n</bndbox>\n</object>\n"
    )


def test_voc_floats_difficult_and_clipping(tmp_path, gfl_log):
    xml = (
        _obj("cat", ("10.5", "5.25", "40.5", "30"))
        + _obj("dog", (1, 1, 20, 20), difficult=1)
        + _obj("cat", (60, 10, 130, 45))
    )
    root = _voc(tmp_path, xml)
    (record,) = read_dataset_folder(str(root), "train").records
    anns = record["annotations"]
    np.testing.assert_allclose(anns[0]["bbox"], [9.5, 4.25, 40.5, 30.0])  # VOC's 1-based corners
    assert [a["iscrowd"] for a in anns] == [0, 1, 0]
    np.testing.assert_allclose(
        anns[2]["bbox"], [59.0, 9.0, 100.0, 45.0]
    )  # clipped to the 100 px image
    log = "\n".join(gfl_log)
    assert "1 boxes reaching outside their image (clipped to it)" in log and "a.xml:" in log
    assert "1 'difficult' objects (ignored regions" in log


def test_voc_bad_objects_are_named_with_their_line(tmp_path):
    xml = (
        _obj("cat", (1, 1, 5, 5))
        + _obj("horse", (1, 1, 5, 5))
        + _obj("cat", (200, 100, 300, 120))
        + _obj("dog", ("x1", 1, 5, 5))
        + _obj("dog", (9, 1, 5, 5))
    )
    root = _voc(tmp_path, xml, ids=("a", "a"))
    with pytest.raises(DatasetError) as e:
        read_dataset_folder(str(root), "train")
    msg, xml_path = str(e.value), root / "Annotations" / "a.xml"
    assert (
        f"{root / 'ImageSets' / 'Main' / 'train.txt'}:2: image 'a' listed twice (also line 1)"
        in msg
    )
    # each object is 10 lines, after 2 lines of header
    assert (
        f"{xml_path}:13: unknown class name 'horse' (the classes, from {root / 'labels.txt'}: "
        "['cat', 'dog'])" in msg
    )
    assert f"{xml_path}:23: box [200.0, 100.0, 300.0, 120.0] lies outside its 100x50 image" in msg
    assert f"{xml_path}:37: <xmin> is not a number: 'x1'" in msg
    assert f"{xml_path}:43: xmax/ymax below xmin/ymin" in msg


def test_voc_missing_or_unreadable_images_and_broken_xml(tmp_path):
    root = _voc(tmp_path, _obj("cat", (1, 1, 5, 5)), ids=("a", "b", "c"))
    os.remove(root / "JPEGImages" / "b.jpg")
    (root / "JPEGImages" / "c.jpg").write_bytes(b"not an image")
    (root / "Annotations" / "a.xml").write_text("<annotation>\n<size>\n</annotation>\n")
    with pytest.raises(DatasetError) as e:
        read_dataset_folder(str(root), "train")
    msg = str(e.value)
    assert f"{root / 'Annotations' / 'a.xml'}:3: not valid XML (mismatched tag)" in msg
    assert f"{root / 'Annotations' / 'b.xml'}: its image is missing (looked for b.jpg" in msg
    assert f"{root / 'JPEGImages' / 'c.jpg'}: cannot be read as an image" in msg


def test_voc_class_names_from_annotations_without_a_class_file(tmp_path):
    root = _voc(tmp_path, _obj("zebra", (1, 1, 5, 5)) + _obj("ant", (1, 1, 9, 9)), classes=None)
    assert read_dataset_folder(str(root), "train").classes == ["ant", "zebra"]


def test_coco_bad_entries_are_named(tmp_path, objects):
    _, records = objects
    root = tmp_path / "coco"
    json_file = write_layout("coco", str(root), "train", records[:3], BARS_CLASSES, BARS_IDS)
    with open(json_file) as f:
        content = json.load(f)
    content["annotations"][0]["category_id"] = 5
    content["annotations"][1]["bbox"] = [1, 2, 3]
    content["images"].append(dict(content["images"][0], id=99))
    content["images"].append(dict(content["images"][0], id=100, file_name="missing.png"))
    with open(json_file, "w") as f:
        json.dump(content, f)
    with pytest.raises(DatasetError) as e:
        read_dataset_folder(str(root), "train")
    msg = str(e.value)
    assert (
        f"{json_file}: annotations[0] (id 1): category_id 5 is not in 'categories' ([3, 7, 11, 20])"
        in msg
    )
    assert f"{json_file}: annotations[1] (id 2): bbox must be 4 numbers" in msg
    assert (
        f"{json_file}: images[3]: image {content['images'][0]['file_name']!r} listed twice (also "
        "images[0])" in msg
    )
    assert "missing.png: image file not found" in msg
    with open(json_file, "w") as f:
        f.write('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DatasetError, match=r"instances_train.json:2: not valid JSON"):
        read_dataset_folder(str(root), "train")


def test_own_data_image_size_setting_scales_down_only_unless_asked():
    import detectron2.data.transforms as T

    from gfl_d2.data.augmentations import resize_and_flip

    small, large = np.zeros((100, 150, 3), np.uint8), np.zeros((640, 1200, 3), np.uint8)
    (shrink,) = resize_and_flip(320, 533, flip=False)
    assert isinstance(shrink.get_transform(small), T.NoOpTransform)
    t = shrink.get_transform(large)
    assert (t.new_h, t.new_w) == (284, 533)  # the longer side's limit binds
    (enlarge,) = resize_and_flip(320, 533, flip=False, enlarge=True)
    t = enlarge.get_transform(small)
    assert (t.new_h, t.new_w) == (320, 480)
    assert resize_and_flip(0, 0, flip=False) == []
    with pytest.raises(ValueError, match="max_size >= min_size"):
        resize_and_flip(320, 100)


def test_voc_reader_agrees_with_detectron2s_own_voc_loader(tmp_path, objects):
    """
    The VOC convention (1-based corners, ids from ImageSets) as detectron2's load_voc_instances
    reads it.
    """
    from detectron2.data.datasets.pascal_voc import load_voc_instances
    from PIL import Image

    _, records = objects
    jpeg = []
    for r in records:  # detectron2's loader expects JPEGImages/<id>.jpg
        path = tmp_path / "jpg" / (os.path.splitext(os.path.basename(r["file_name"]))[0] + ".jpg")
        path.parent.mkdir(exist_ok=True)
        Image.open(r["file_name"]).convert("RGB").save(path, quality=95)
        jpeg.append(dict(r, file_name=str(path)))
    root = tmp_path / "voc"
    write_layout("voc", str(root), "train", jpeg, BARS_CLASSES)
    ours = read_dataset_folder(str(root), "train").records
    theirs = load_voc_instances(str(root), "train", BARS_CLASSES)
    assert len(ours) == len(theirs) == len(records)
    for a, b, want in zip(ours, theirs, records):
        assert (a["file_name"], a["image_id"], a["height"], a["width"]) == (
            b["file_name"],
            b["image_id"],
            b["height"],
            b["width"],
        )
        assert [x["category_id"] for x in a["annotations"]] == [
            x["category_id"] for x in b["annotations"]
        ]
        if a["annotations"]:
            np.testing.assert_allclose(
                [x["bbox"] for x in a["annotations"]],
                [x["bbox"] for x in b["annotations"]],
                atol=1e-4,
            )
        # the one deliberate difference: detectron2 trains on 'difficult' objects, VOC (and this
        # reader) ignore them
        assert [x["iscrowd"] for x in a["annotations"]] == [
            x.get("iscrowd", 0) for x in want["annotations"]
        ]


def test_exif_rotated_images_read_and_check_at_the_size_detectron2_loads(tmp_path):
    from detectron2.data.detection_utils import read_image
    from PIL import Image

    from gfl_d2.data import check_dataset_dicts

    root = _yolo(tmp_path, {"x": "0 0.5 0.5 0.2 0.2\n"}, images=())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 100x50, shown 50x100
    path = root / "images" / "train" / "x.jpg"
    Image.new("RGB", (100, 50)).save(path, exif=exif)
    (record,) = read_dataset_folder(str(root), "train").records
    h, w = read_image(str(path)).shape[:2]
    assert (record["width"], record["height"]) == (w, h) == (50, 100)
    check_dataset_dicts([record], 2)  # the pre-training check agrees with the reader


def test_class_name_files_are_checked_alike_in_voc_and_yolo(tmp_path):
    voc = _voc(tmp_path, _obj("cat", (1, 1, 5, 5)), classes="cat\ndog\ncat\n")
    with pytest.raises(DatasetError, match=r"labels.txt: class names listed twice: \['cat'\]"):
        read_dataset_folder(str(voc), "train")
    yolo = _yolo(tmp_path, {"x": ""}, names="\n\n")
    with pytest.raises(DatasetError, match=r"classes.txt: names no classes"):
        read_dataset_folder(str(yolo), "train")
