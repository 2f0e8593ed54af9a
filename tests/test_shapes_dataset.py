import hashlib
import json
import os

import numpy as np
import pytest
from pycocotools.coco import COCO

from gfl_d2.data import CATEGORIES, ShapesConfig, render_image, write_split
from gfl_d2.data.shapes import build_shapes_dataset


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_images(tmp_path):
    a = write_split(str(tmp_path / "a"), "train", 6, seed=3, progress=False)
    b = write_split(str(tmp_path / "b"), "train", 6, seed=3, progress=False)
    with open(a) as fa, open(b) as fb:
        assert json.load(fa) == json.load(fb)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    c = write_split(str(tmp_path / "c"), "train", 6, seed=4, progress=False)
    with open(a) as fa, open(c) as fc:
        assert json.load(fa)["annotations"] != json.load(fc)["annotations"]
    img3, _ = render_image(0, 3, ShapesConfig())
    img4, _ = render_image(0, 4, ShapesConfig())
    assert not np.array_equal(img3, img4)


def test_valid_coco(tmp_path):
    cfg = ShapesConfig()
    path = write_split(str(tmp_path), "val", 20, seed=1, cfg=cfg, progress=False)
    coco = COCO(path)
    assert sorted(coco.getCatIds()) == [c for c, _, _ in CATEGORIES]
    assert [coco.cats[c]["name"] for c, _, _ in CATEGORIES] == [n for _, n, _ in CATEGORIES]
    assert len(coco.getImgIds()) == 20
    counts = []
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        assert os.path.isfile(tmp_path / "val" / info["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        counts.append(len(anns))
        for a in anns:
            x, y, w, h = a["bbox"]
            assert (
                x >= 0
                and y >= 0
                and x + w <= info["width"] + 1e-6
                and y + h <= info["height"] + 1e-6
            )
            assert w >= cfg.min_size - 1e-6 and h >= cfg.min_size - 1e-6
            assert max(w, h) <= cfg.max_size_frac * cfg.image_size + 1e-6
            assert a["category_id"] in coco.cats and a["iscrowd"] == 0
            assert len(a["edge_flags"]["blurred"]) == 4 and len(a["edge_flags"]["occluded"]) == 4
            assert a["visible_frac"] >= 1 - cfg.max_occluded_frac - 1e-6
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ids)) == len(ids)
    # several to dozens of objects, with variety
    assert min(counts) >= 1 and max(counts) >= 10
    # detectron2's loader accepts it (including the extra field)
    from detectron2.data.datasets import load_coco_json

    dicts = load_coco_json(path, str(tmp_path / "val"), extra_annotation_keys=["edge_flags"])
    assert len(dicts) == 20 and "edge_flags" in dicts[0]["annotations"][0]


def _flags(cfg, n=12):
    anns = [a for i in range(n) for a in render_image(i, 0, cfg)[1]]
    blurred = np.array([a["edge_flags"]["blurred"] for a in anns])
    occluded = np.array([a["edge_flags"]["occluded"] for a in anns])
    return anns, blurred, occluded


def test_difficulty_knobs():
    # no blur / fade: no blurred edge; always: every edge
    _, blurred, _ = _flags(ShapesConfig(blur_prob=0.0, fade_edge_prob=0.0))
    assert not blurred.any()
    _, blurred, _ = _flags(ShapesConfig(blur_prob=1.0))
    assert blurred.all()
    _, blurred, _ = _flags(ShapesConfig(blur_prob=0.0, fade_edge_prob=0.5))
    assert 0.3 < blurred.mean() < 0.7

    # no occlusion allowed: every object fully visible
    anns, _, occluded = _flags(ShapesConfig(max_occluded_frac=0.0))
    assert not occluded.any() and all(a["visible_frac"] == 1.0 for a in anns)
    anns, _, occluded = _flags(ShapesConfig(max_occluded_frac=0.6, min_objects=20, max_objects=24))
    assert occluded.any() and min(a["visible_frac"] for a in anns) < 0.9

    # object counts and sizes
    for n in range(5):
        _, anns = render_image(n, 0, ShapesConfig(min_objects=0, max_objects=2))
        assert len(anns) <= 2
    anns, _, _ = _flags(ShapesConfig(min_size=20, max_size_frac=0.25))
    sides = np.array([a["bbox"][2:] for a in anns])
    assert sides.min() >= 20 - 1e-6 and sides.max() <= 32 + 1e-6

    # clean background vs noisy, cluttered one: high-frequency energy
    def roughness(cfg):
        img, _ = render_image(0, 5, cfg)
        return np.abs(np.diff(img.astype(float), axis=1)).mean()

    clean = ShapesConfig(noise_std=0.0, clutter=0, min_objects=0, max_objects=0)
    noisy = ShapesConfig(noise_std=20.0, clutter=0, min_objects=0, max_objects=0)
    assert roughness(clean) < 1.0 < roughness(noisy)


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="min_objects"):
        write_split(
            str(tmp_path), "x", 1, 0, ShapesConfig(min_objects=5, max_objects=2), progress=False
        )
    with pytest.raises(ValueError, match="blur_prob"):
        ShapesConfig(blur_prob=2.0).validate()


def test_build_is_skipped_when_current(tmp_path):
    splits = [("train", 3, 0)]
    paths = build_shapes_dataset(str(tmp_path), splits, progress=False)
    mtime = os.path.getmtime(paths["train"])
    build_shapes_dataset(str(tmp_path), splits, progress=False)
    assert os.path.getmtime(paths["train"]) == mtime
    # other settings: regenerated
    build_shapes_dataset(str(tmp_path), [("train", 4, 0)], progress=False)
    with open(paths["train"]) as f:
        assert len(json.load(f)["images"]) == 4


@pytest.mark.parametrize("image_size", [64, 128])
def test_drawing_in_windows_equals_drawing_on_the_whole_image(monkeypatch, image_size):
    """
    Each object is drawn in a window around its box; a window as large as the image is the plain
    way.
    """
    import gfl_d2.data.shapes as shapes

    cfg = ShapesConfig(
        image_size=image_size, blur_prob=0.5, fade_edge_prob=0.5
    )  # blurs spread the furthest
    windowed = [render_image(i, 3, cfg) for i in range(40)]
    monkeypatch.setattr(shapes, "WINDOW_MARGIN", 10 * image_size)
    for i, (img, anns) in enumerate(windowed):
        whole_img, whole_anns = render_image(i, 3, cfg)
        assert np.array_equal(img, whole_img), i
        assert json.dumps(anns) == json.dumps(whole_anns), i
