"""The dataset check before training (gfl_d2.data.check_dataset_dicts) and unreadable annotation files."""
import logging
import os

import pytest
from PIL import Image

from detectron2.config import LazyConfig

from gfl_d2.data import DatasetError, check_dataset_dicts
from gfl_d2.training import build_train_loader
from gfl_d2.testing import ROOT


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
        (record(good, [ann([1, 1, 10, 10]), ann([1, 1, 5, 5], cls=7)]), "good.png: annotation 1: class id 7 outside"),
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
        with pytest.raises(RuntimeError, match=rf"Could not build the training data \['{name}'\] .*{path}"):
            build_train_loader(cfg)
