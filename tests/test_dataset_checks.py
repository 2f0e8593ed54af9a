"""
The dataset check before training (gfl_d2.data.check_dataset_dicts) and unreadable annotation files.
"""

import logging
import os

import pytest
import torch
from detectron2.config import LazyConfig
from PIL import Image

from gfl_d2.data import DatasetError, check_dataset_dicts
from gfl_d2.training import build_train_loader

from .repo import ROOT


# ---------------------------------------------------------------- bad datasets and files
def write_image(path, size=(32, 48)):
    Image.new("RGB", (size[1], size[0])).save(path)


def record(path, anns, h=32, w=48):
    return {"file_name": str(path), "image_id": 1, "height": h, "width": w, "annotations": anns}


def ann(bbox, cls=0):
    return {"bbox": bbox, "bbox_mode": 1, "category_id": cls}  # BoxMode.XYWH_ABS


def test_dataset_check_errors_name_the_files(tmp_path):
    good = tmp_path / "good.png"
    write_image(good)
    check_dataset_dicts([record(good, [ann([1, 1, 10, 10])])], num_classes=2)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    cases = [
        (record(tmp_path / "missing.png", []), "missing.png: image file not found"),
        (record(corrupt, []), "corrupt.png: cannot be read as an image"),
        (record(good, [], h=64), "good.png: image is 48x32 but its record says 48x64"),
        (record(good, [ann([1, float("nan"), 10, 10])]), "good.png: annotation 0: non-finite box"),
        (
            record(good, [ann([1, 1, 10, 10]), ann([1, 1, 5, 5], cls=7)]),
            "good.png: annotation 1: class id 7 outside",
        ),
        (record(good, [ann([1, 1, 10])]), "good.png: annotation 0: malformed bbox"),
    ]
    for rec, message in cases:
        with pytest.raises(DatasetError) as e:
            check_dataset_dicts([record(good, []), rec], num_classes=2)
        assert message in str(e.value)
    with pytest.raises(DatasetError, match="empty"):
        check_dataset_dicts([])


def test_dataset_check_counts_degenerate_boxes(tmp_path, caplog):
    img = tmp_path / "a.png"
    write_image(img)
    anns = [ann([1, 1, 0, 5]), ann([40, 20, 20, 20]), ann([60, 40, 5, 5]), ann([2, 2, 5, 5])]
    with caplog.at_level(logging.WARNING):
        check_dataset_dicts([record(img, anns)], num_classes=1)
    text = caplog.text
    assert "1 boxes with zero or negative width/height" in text
    assert "1 boxes partly outside" in text and "1 boxes wholly outside" in text


def test_missing_and_malformed_annotation_json(tmp_path):
    from detectron2.data.datasets import register_coco_instances

    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ this is not json")
    register_coco_instances("robustness_missing", {}, str(tmp_path / "nope.json"), str(tmp_path))
    register_coco_instances("robustness_malformed", {}, str(bad_json), str(tmp_path))
    for name, path in [("robustness_missing", "nope.json"), ("robustness_malformed", "bad.json")]:
        cfg = LazyConfig.load(os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py"))
        cfg.dataloader.train.dataset.names = name
        with pytest.raises(
            RuntimeError, match=rf"Could not build the training data \['{name}'\] .*{path}"
        ):
            build_train_loader(cfg)


# ---------------------------------------------------------------- one record policy
def test_bbox_mode_is_required_not_guessed(tmp_path):
    img = tmp_path / "a.png"
    write_image(img)
    with pytest.raises(
        DatasetError,
        match=r"a.png: annotation 0: malformed bbox \(the annotation has no 'bbox_mode'",
    ):
        check_dataset_dicts(
            [record(img, [{"bbox": [1, 1, 10, 10], "category_id": 0}])], num_classes=1
        )


def test_reader_dataset_check_and_model_clip_and_drop_the_same_boxes(tmp_path, caplog):
    """
    One box policy: the VOC reader, the dataset check and the training batches'
    ground-truth check agree box by box.
    """
    from detectron2.structures import BoxMode

    from gfl_d2.data import read_dataset_folder
    from gfl_d2.data.ground_truth import sanitize_gt_instances
    from gfl_d2.testing import make_instances

    boxes = [
        [10, 10, 40, 30],
        [60, 10, 130, 45],
        [20, 10, 20, 30],
    ]  # inside; partly outside; zero width
    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    Image.new("RGB", (100, 50)).save(root / "JPEGImages" / "a.jpg")
    objects = "".join(  # VOC's corners are 1-based
        f"<object><name>cat</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    (root / "Annotations" / "a.xml").write_text(f"<annotation>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "labels.txt").write_text("cat\n")
    with caplog.at_level(logging.WARNING):
        (read,) = read_dataset_folder(str(root), "train").records
    assert "1 boxes reaching outside their image (clipped to it)" in caplog.text
    assert "1 boxes of zero width or height (dropped)" in caplog.text
    expected = [[10.0, 10.0, 40.0, 30.0], [60.0, 10.0, 100.0, 45.0]]
    assert [a["bbox"] for a in read["annotations"]] == expected

    caplog.clear()
    raw = [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in boxes]
    with caplog.at_level(logging.WARNING):
        check_dataset_dicts([dict(read, annotations=raw)], num_classes=1)
    assert "1 boxes partly outside their image (clipped)" in caplog.text
    assert "1 boxes with zero or negative width/height (dropped)" in caplog.text

    inputs = [{"instances": make_instances(boxes, [0, 0, 0], (50, 100)), "file_name": "a.jpg"}]
    (cleaned,), num_clipped, num_dropped = sanitize_gt_instances(inputs, 1, torch.device("cpu"))
    assert cleaned.gt_boxes.tensor.tolist() == expected
    assert (num_clipped.item(), num_dropped.item()) == (1, 1)


def test_the_policy_on_floats_and_on_tensors_agrees():
    """
    The readers' per-box form and the model's tensor form give every box the
    same fate and clipped box.
    """
    from gfl_d2.data.box_policy import BoxFate, box_fate, box_fates

    g = torch.Generator().manual_seed(0)
    boxes = (
        torch.rand(2000, 4, generator=g, dtype=torch.float64) * 160 - 30
    ).round()  # many on the edges
    boxes[:5] = torch.tensor(
        [
            [1, 2, float("nan"), 4],
            [0, 0, float("inf"), 5],
            [5, 5, 5, 9],
            [9, 1, 5, 5],
            [100, 1, 120, 9],
        ],
        dtype=torch.float64,
    )
    clipped, fates = box_fates(boxes, 100, 80)
    scalar = [box_fate(b, 100, 80) for b in boxes.tolist()]
    assert fates.tolist() == [int(f) for f, _ in scalar]
    assert fates[:5].tolist() == [
        BoxFate.NONFINITE,
        BoxFate.NONFINITE,
        BoxFate.EMPTY,
        BoxFate.INVERTED,
        BoxFate.OUTSIDE,
    ]
    assert set(fates.tolist()) == set(BoxFate)  # every fate occurs
    finite = fates != BoxFate.NONFINITE
    assert clipped[finite].tolist() == [c for (f, c) in scalar if f != BoxFate.NONFINITE]
