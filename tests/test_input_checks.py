"""The ground truth that reaches the model in training: errors that name the image, clean-up that is counted."""

import pytest
import torch

from gfl_d2.testing import make_instances, shapes_image, tiny_gfl, train_step


def item(boxes, classes, size=(128, 128), name="img_7.png"):
    return {
        "image": shapes_image([], [], size=size),
        "instances": make_instances(boxes, classes, size),
        "file_name": name,
    }


# ---------------------------------------------------------------- bad annotations at the model
def test_nan_box_is_an_error_naming_the_image():
    model = tiny_gfl()
    with pytest.raises(ValueError, match=r"img_7.png: ground-truth box with NaN/Inf"):
        train_step(
            model,
            [item([[1, 2, 30, 40]], [0], name="ok.png"), item([[1, float("nan"), 30, 40]], [0])],
        )
    with pytest.raises(ValueError, match=r"img_7.png: .*NaN/Inf"):
        train_step(model, [item([[1, 2, float("inf"), 40]], [0])])


def test_class_out_of_range_is_an_error_naming_the_image():
    model = tiny_gfl(num_classes=3)
    with pytest.raises(
        ValueError, match=r"img_7.png: ground-truth class ids \[3, 9\] outside \[0, 3\)"
    ):
        train_step(model, [item([[1, 2, 30, 40], [5, 5, 20, 20], [3, 3, 9, 9]], [3, 9, 0])])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        train_step(model, [item([[1, 2, 30, 40]], [-1])])


def test_degenerate_and_outside_boxes_are_dropped_or_clipped_and_counted():
    model = tiny_gfl()
    boxes = [
        [10, 10, 50, 60],  # fine
        [20, 20, 20, 40],  # zero width: dropped
        [30, 30, 25, 50],  # negative width: dropped
        [100, 100, 160, 150],  # partly outside: clipped
        [200, 200, 240, 240],  # wholly outside: dropped
        [-10, 5, 30, 40],  # partly outside: clipped
    ]
    losses, storage = train_step(model, [item(boxes, [0, 1, 2, 0, 1, 2])])
    assert all(torch.isfinite(v) for v in losses.values())
    assert storage.history("gfl/gt_boxes_dropped").latest() == 3
    assert storage.history("gfl/gt_boxes_clipped").latest() == 2


def test_many_duplicate_boxes_and_tiny_images():
    model = tiny_gfl()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2000, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 4 + torch.rand(2000, 2, generator=g) * 24], 1).tolist()
    losses, _ = train_step(model, [item(boxes, [i % 3 for i in range(2000)])])
    assert all(torch.isfinite(v) for v in losses.values())
    # duplicates
    losses, _ = train_step(model, [item([[10, 10, 40, 40]] * 5 + [[10, 10, 40, 40]], [1] * 6)])
    assert all(torch.isfinite(v) for v in losses.values())
    # smaller than the largest stride (128), also in one dimension only
    for size in [(20, 20), (24, 300), (9, 9)]:
        h, w = size
        losses, _ = train_step(model, [item([[1, 1, w - 2, h - 2]], [0], size=size)])
        assert all(torch.isfinite(v) for v in losses.values()), size
        model.eval()
        with torch.no_grad():
            (out,) = model([{"image": shapes_image([], [], size=size)}])
        assert out["instances"].image_size == size
