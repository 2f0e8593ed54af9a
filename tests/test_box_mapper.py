"""
BoxDatasetMapper against detectron2's DatasetMapper: the same dict for the same
input and RNG state, on generated shapes data read by detectron2's COCO loader
and on hand-made records covering every kind of box the fast path takes and
the ones it hands back to detectron2.
"""

import copy
import os

import detectron2.data.transforms as T
import numpy as np
import pytest
import torch
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode
from PIL import Image

from gfl_d2.data import BoxDatasetMapper, write_split
from gfl_d2.data.box_policy import box_xyxy

AUGMENTATION_SETS = {
    "flip": [T.RandomFlip(horizontal=True)],
    "vflip": [T.RandomFlip(horizontal=False, vertical=True)],
    "resize+flip": [
        T.ResizeShortestEdge([96, 160], max_size=200, sample_style="range"),
        T.RandomFlip(),
    ],
    "crop+flip": [T.RandomCrop("relative_range", (0.5, 0.5)), T.RandomFlip()],
    "none": [],
}


def assert_same_output(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "instances":
            ia, ib = a[key], b[key]
            assert ia.image_size == ib.image_size
            assert list(ia.get_fields()) == list(ib.get_fields())
            assert torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor)
            assert ia.gt_boxes.tensor.dtype == ib.gt_boxes.tensor.dtype
            assert torch.equal(ia.gt_classes, ib.gt_classes)
            for name in ia.get_fields():
                if name not in ("gt_boxes", "gt_classes"):
                    fa, fb = ia.get(name), ib.get(name)
                    assert len(fa) == len(fb)
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key])
        else:
            assert a[key] == b[key]


def map_both(records, augmentations, seed=0, is_train=True, **kwargs):
    """Each record through both mappers from the same numpy RNG state."""
    kwargs["is_train"] = is_train
    ours = BoxDatasetMapper(augmentations=augmentations, image_format="RGB", **kwargs)
    theirs = DatasetMapper(augmentations=augmentations, image_format="RGB", **kwargs)
    before = copy.deepcopy(records)
    for i, record in enumerate(records):
        np.random.seed(seed + i)
        a = theirs(record)
        state = np.random.get_state()
        np.random.seed(seed + i)
        b = ours(record)
        assert_same_output(a, b)
        # the same RNG use: both leave the generator in the same state
        assert np.array_equal(state[1], np.random.get_state()[1])
    assert unchanged(records, before), "the mapper changed its input"


def unchanged(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(unchanged(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b) and len(a) == len(b) and all(unchanged(x, y) for x, y in zip(a, b))
        )
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def shapes_records(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    json_path = write_split(root, "train", 24, seed=5, progress=False)
    return load_coco_json(json_path, os.path.join(root, "train"), "box_mapper_test_shapes")


@pytest.mark.parametrize("augs", sorted(AUGMENTATION_SETS))
def test_same_output_as_detectron2_on_shapes(shapes_records, augs):
    assert shapes_records[0]["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    map_both(shapes_records, AUGMENTATION_SETS[augs])


def test_same_output_at_inference(shapes_records):
    map_both(shapes_records[:6], [T.ResizeShortestEdge(96, 200)], is_train=False)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("img") / "a.png")
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (60, 80, 3), dtype=np.uint8)).save(
        path
    )
    return path


def record(path, annotations):
    return {"file_name": path, "height": 60, "width": 80, "image_id": 1, "annotations": annotations}


def ann(bbox, mode=BoxMode.XYXY_ABS, cls=1, **extra):
    return {"bbox": bbox, "bbox_mode": mode, "category_id": cls, **extra}


MIXED = [
    ann([1.25, 2.5, 30.75, 40.125]),  # XYXY floats
    ann([3, 4, 50, 59], cls=0),  # XYXY ints (detectron2 keeps them int64 through the transforms)
    ann([10.3, 11.7, 20.1, 5.9], BoxMode.XYWH_ABS, cls=2),  # XYWH floats: float32 sum
    ann([7, 8, 9, 10], BoxMode.XYWH_ABS),  # XYWH ints
    ann((5, 6.5, 15, 16), BoxMode.XYWH_ABS),  # tuple, mixed int / float
    ann([-10.0, -5.0, 20.0, 30.0]),  # partly outside: clipped
    ann([70.0, 50.0, 95.0, 70.0], cls=3),  # partly outside on the far side
    ann([100.0, 100.0, 120.0, 130.0]),  # wholly outside: empty after clipping, dropped
    ann([20.0, 20.0, 20.0, 30.0]),  # zero width: dropped
    ann([1.0, 1.0, 40.0, 40.0], iscrowd=1),  # crowd: skipped
    ann([2.0, 3.0, 30.0, 33.0], segmentation=[[2, 3, 30, 3, 30, 33]], keypoints=[1, 2, 2]),
]


@pytest.mark.parametrize("augs", sorted(AUGMENTATION_SETS))
def test_same_output_for_every_kind_of_box(image_file, augs):
    records = [record(image_file, MIXED), record(image_file, []), record(image_file, MIXED[:1])]
    map_both(records, AUGMENTATION_SETS[augs])


@pytest.mark.parametrize(
    "odd",
    [
        ann(
            np.array([1.5, 2.5, 30.5, 40.5], dtype=np.float32)
        ),  # ndarray: detectron2's float32 flip
        ann([np.float32(1.5), 2.5, 30.5, 40.5]),  # numpy scalars
        ann([30.0, 30.0, 20.0, 10.0, 30.0], BoxMode.XYWHA_ABS),  # rotated box
        ann([True, 2, 30, 40]),
    ],
)
def test_boxes_it_does_not_take_go_through_detectron2(image_file, odd):
    map_both([record(image_file, MIXED[:3] + [odd])], AUGMENTATION_SETS["resize+flip"])


def test_masks_go_through_detectron2(image_file):
    with_masks = [a for a in MIXED if "segmentation" in a] + [
        ann([10.0, 10.0, 40.0, 50.0], segmentation=[[10, 10, 40, 10, 40, 50, 10, 50]])
    ]
    records = [record(image_file, with_masks)]
    map_both(
        records, AUGMENTATION_SETS["resize+flip"], use_instance_mask=True, recompute_boxes=True
    )
    out = BoxDatasetMapper(
        is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True
    )(records[0])
    assert out["instances"].has("gt_masks")


def test_box_xyxy_equals_boxmode_convert():
    rng = np.random.RandomState(0)
    values = list(rng.uniform(-2000, 2000, 4000)) + [
        0.1,
        1e-8,
        3.4e38,
        1e39,
        float("inf"),
        float("nan"),
    ]
    values += [int(v) for v in rng.randint(-5000, 5000, 400)]
    boxes = [values[i : i + 4] for i in range(0, len(values) - 3, 4)] + [
        [1e39, 0.0, 1e39, 1.0],
        [2**25 + 1, 1, 3, 4],
    ]
    for box in boxes:
        for mode in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
            ours = box_xyxy({"bbox": box, "bbox_mode": mode})
            theirs = BoxMode.convert([float(v) for v in box], mode, BoxMode.XYXY_ABS)
            np.testing.assert_array_equal(np.array(ours), np.array(theirs))
