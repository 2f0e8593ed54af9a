"""
The ground truth that reaches the model in training, checked where it enters
(``gfl_d2.data.ground_truth``): errors that name the image, clean-up that is counted.
"""

import pytest
import torch
from detectron2.utils.events import EventStorage

from gfl_d2.data.ground_truth import CheckedGroundTruth, with_checked_ground_truth
from gfl_d2.testing import make_instances, shapes_image, tiny_gfl, train_step


def item(boxes, classes, size=(128, 128), name="img_7.png"):
    return {
        "image": shapes_image([], [], size=size),
        "instances": make_instances(boxes, classes, size),
        "file_name": name,
    }


def checked_train_step(model, batch):
    """One training step on a batch checked as the training entry points check it."""
    model.train()
    with EventStorage() as storage:
        batch = with_checked_ground_truth(batch, model.num_classes, model.device)
        losses = model(batch)
        sum(losses.values()).backward()
    return losses, storage


# ---------------------------------------------------------------- bad annotations in a batch
def test_nan_box_is_an_error_naming_the_image():
    model = tiny_gfl()
    with pytest.raises(ValueError, match=r"img_7.png: ground-truth box with NaN/Inf"):
        checked_train_step(
            model,
            [item([[1, 2, 30, 40]], [0], name="ok.png"), item([[1, float("nan"), 30, 40]], [0])],
        )
    with pytest.raises(ValueError, match=r"img_7.png: .*NaN/Inf"):
        checked_train_step(model, [item([[1, 2, float("inf"), 40]], [0])])


def test_class_out_of_range_is_an_error_naming_the_image():
    model = tiny_gfl(num_classes=3)
    with pytest.raises(
        ValueError, match=r"img_7.png: ground-truth class ids \[3, 9\] outside \[0, 3\)"
    ):
        checked_train_step(model, [item([[1, 2, 30, 40], [5, 5, 20, 20], [3, 3, 9, 9]], [3, 9, 0])])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        checked_train_step(model, [item([[1, 2, 30, 40]], [-1])])


BOXES = [
    [10, 10, 50, 60],  # fine
    [20, 20, 20, 40],  # zero width: dropped
    [30, 30, 25, 50],  # negative width: dropped
    [100, 100, 160, 150],  # partly outside: clipped
    [200, 200, 240, 240],  # wholly outside: dropped
    [-10, 5, 30, 40],  # partly outside: clipped
]


def test_degenerate_and_outside_boxes_are_dropped_or_clipped_and_counted():
    model = tiny_gfl()
    losses, storage = checked_train_step(model, [item(BOXES, [0, 1, 2, 0, 1, 2])])
    assert all(torch.isfinite(v) for v in losses.values())
    assert storage.history("gfl/gt_boxes_dropped").latest() == 3
    assert storage.history("gfl/gt_boxes_clipped").latest() == 2


def test_checked_batch_holds_the_clipped_boxes_and_the_rest_of_the_inputs():
    batch = [item(BOXES, [0, 1, 2, 0, 1, 2]), item([[1, 2, 30, 40]], [1], name="b.png")]
    with EventStorage():
        checked = with_checked_ground_truth(batch, 3, torch.device("cpu"))
    assert [x["file_name"] for x in checked] == ["img_7.png", "b.png"]
    assert checked[0]["image"] is batch[0]["image"]
    inst = checked[0]["instances"]
    torch.testing.assert_close(
        inst.gt_boxes.tensor,
        torch.tensor([[10.0, 10, 50, 60], [100, 100, 128, 128], [0, 5, 30, 40]]),
    )
    assert inst.gt_classes.tolist() == [0, 0, 2]
    assert len(batch[0]["instances"]) == 6  # the loader's batch itself is left as it was
    with pytest.raises(ValueError, match="needs 'instances'"):
        with EventStorage():
            with_checked_ground_truth([{"image": batch[0]["image"]}], 3, torch.device("cpu"))


def test_checked_ground_truth_wraps_the_training_loader():
    loader = [
        [item([[1, 2, 30, 40]], [0]), item(BOXES, [0, 1, 2, 0, 1, 2])],
        [item([[1, 2, 30, 40]], [1]), item([[5, 5, 20, 20]], [5], name="bad.png")],
    ]
    checked = CheckedGroundTruth(loader, num_classes=3)
    assert len(checked) == 2
    model = tiny_gfl()
    model.train()
    batches = iter(checked)
    with EventStorage() as storage:
        first = next(batches)
        assert [len(x["instances"]) for x in first] == [1, 3]
        assert storage.history("gfl/gt_boxes_dropped").latest() == 3
        assert storage.history("gfl/gt_boxes_clipped").latest() == 2
        losses = model(first)
        assert all(torch.isfinite(v) for v in losses.values())
        with pytest.raises(ValueError, match=r"bad.png: ground-truth class ids \[5\]"):
            next(batches)


def test_the_model_itself_leaves_the_ground_truth_to_the_loader():
    """The model trains on what it is given: the checks and their counts are the loader's."""
    model = tiny_gfl()
    losses, storage = train_step(model, [item([[10, 10, 50, 60], [100, 100, 160, 150]], [0, 1])])
    assert all(torch.isfinite(v) for v in losses.values())
    histories = storage.histories()
    assert "gfl/gt_boxes_clipped" not in histories and "gfl/gt_boxes_dropped" not in histories


def test_many_duplicate_boxes_and_tiny_images():
    model = tiny_gfl()
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2000, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 4 + torch.rand(2000, 2, generator=g) * 24], 1).tolist()
    losses, _ = checked_train_step(model, [item(boxes, [i % 3 for i in range(2000)])])
    assert all(torch.isfinite(v) for v in losses.values())
    # duplicates
    losses, _ = checked_train_step(
        model, [item([[10, 10, 40, 40]] * 5 + [[10, 10, 40, 40]], [1] * 6)]
    )
    assert all(torch.isfinite(v) for v in losses.values())
    # smaller than the largest stride (128), also in one dimension only
    for size in [(20, 20), (24, 300), (9, 9)]:
        h, w = size
        losses, _ = checked_train_step(model, [item([[1, 1, w - 2, h - 2]], [0], size=size)])
        assert all(torch.isfinite(v) for v in losses.values()), size
        model.eval()
        with torch.no_grad():
            (out,) = model([{"image": shapes_image([], [], size=size)}])
        assert out["instances"].image_size == size
