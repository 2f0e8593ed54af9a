"""Bad data, bad files, non-finite losses, interrupted and multi-process training."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage

from gfl_d2.data import DatasetError, check_dataset_dicts
from gfl_d2.engine import CheckedCheckpointer, SimpleTrainer, clip_gradients
from helpers import TINY_OVERRIDES, make_instances, shapes_image, tiny_gfl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def item(boxes, classes, size=(128, 128), name="img_7.png"):
    return {"image": shapes_image([], [], size=size), "instances": make_instances(boxes, classes, size), "file_name": name}


def train_step(model, data):
    model.train()
    with EventStorage() as storage:
        losses = model(data)
        sum(losses.values()).backward()
    return losses, storage


# ---------------------------------------------------------------- bad annotations at the model
def test_nan_box_is_an_error_naming_the_image():
    model = tiny_gfl()
    with pytest.raises(ValueError, match=r"img_7.png: ground-truth box with NaN/Inf"):
        train_step(model, [item([[1, 2, 30, 40]], [0], name="ok.png"), item([[1, float("nan"), 30, 40]], [0])])
    with pytest.raises(ValueError, match=r"img_7.png: .*NaN/Inf"):
        train_step(model, [item([[1, 2, float("inf"), 40]], [0])])


def test_class_out_of_range_is_an_error_naming_the_image():
    model = tiny_gfl(num_classes=3)
    with pytest.raises(ValueError, match=r"img_7.png: ground-truth class ids \[3, 9\] outside \[0, 3\)"):
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


def test_truncated_and_foreign_checkpoints(tmp_path):
    model = tiny_gfl()
    CheckedCheckpointer(model, save_dir=str(tmp_path)).save("good")
    good = tmp_path / "good.pth"
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"model": torch.nn.Linear(3, 4).state_dict()}, tmp_path / "foreign.pth")
    torch.save({"something": 1}, tmp_path / "nomodel.pth")
    backbone_only = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone_only}, tmp_path / "backbone.pth")

    fresh = tiny_gfl()
    with pytest.raises(RuntimeError, match="Cannot read checkpoint .*truncated.pth"):
        CheckedCheckpointer(fresh).load(str(tmp_path / "truncated.pth"))
    with pytest.raises(RuntimeError, match="None of the checkpoint's 2 tensors fits this GFL model"):
        CheckedCheckpointer(fresh).load(str(tmp_path / "foreign.pth"))
    with pytest.raises(RuntimeError, match="no model weights"):
        CheckedCheckpointer(fresh).load(str(tmp_path / "nomodel.pth"))
    CheckedCheckpointer(fresh).load(str(tmp_path / "backbone.pth"))  # partial: fine
    CheckedCheckpointer(fresh).load(str(good))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_missing_and_malformed_annotation_json(tmp_path):
    import importlib.util

    from detectron2.data.datasets import register_coco_instances

    spec = importlib.util.spec_from_file_location("train_net", os.path.join(ROOT, "tools", "train_net.py"))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{ this is not json")
    register_coco_instances("robustness_missing", {}, str(tmp_path / "nope.json"), str(tmp_path))
    register_coco_instances("robustness_malformed", {}, str(bad_json), str(tmp_path))
    for name, path in [("robustness_missing", "nope.json"), ("robustness_malformed", "bad.json")]:
        cfg = LazyConfig.load(os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py"))
        cfg.dataloader.train.dataset.names = name
        with pytest.raises(RuntimeError, match=rf"Could not build the training data \['{name}'\] .*{path}"):
            train_net.build_train_loader(cfg)


def test_unknown_config_key_is_refused_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "train.max_itr=5"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path)),
    )
    assert proc.returncode != 0
    assert "config key 'train.max_itr' does not exist: train has no 'max_itr'; did you mean 'train.max_iter'?" in proc.stderr
    assert not (tmp_path / "shapes").exists()  # nothing was generated or trained


# ---------------------------------------------------------------- non-finite losses, clipping
def test_non_finite_loss_stops_with_the_term_and_iteration():
    model = tiny_gfl()
    data = [item([[10, 10, 50, 60]], [1])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = SimpleTrainer(model, iter([data] * 10), optimizer)
    with torch.no_grad():
        model.head.cls_score.bias[1] = float("nan")
    with pytest.raises(FloatingPointError, match=r"iteration=3!\nloss_dict = (.|\n)*non-finite loss terms: loss_qfl"):
        trainer.train(3, 5)


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(10))
    opt = clip_gradients(torch.optim.SGD([w], lr=1.0), clip_type="norm", clip_value=1.0)
    (w * 1000.0).sum().backward()
    opt.step()
    assert abs(w.detach().norm().item() - 1.0) < 1e-5
    opt = clip_gradients(torch.optim.SGD([w], lr=1.0), clip_type="value", clip_value=0.5)
    opt.zero_grad()
    before = w.detach().clone()
    (w * -1000.0).sum().backward()
    opt.step()
    torch.testing.assert_close(w.detach() - before, torch.full((10,), 0.5))
    with pytest.raises(ValueError, match="clip_type"):
        clip_gradients(torch.optim.SGD([w], lr=1.0), clip_type="both")


# ---------------------------------------------------------------- interrupted, deterministic, multi-process
def metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_cmd(out_dir, *extra):
    return [sys.executable, "tools/train_net.py", f"train.output_dir={out_dir}", *TINY_OVERRIDES, *extra]


def test_killed_run_resumes_where_it_stopped(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONWARNINGS="ignore")
    out = tmp_path / "out"
    args = ["train.max_iter=40", "train.checkpointer.period=10", "train.log_period=1", "train.eval_period=0"]
    proc = subprocess.Popen(train_cmd(out, *args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "last_checkpoint").is_file() or "0000009" not in (out / "last_checkpoint").read_text():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(m["iteration"] for m in metrics(out / "metrics.json"))
    assert killed_at < 39
    resumed = subprocess.run(
        [sys.executable, "tools/train_net.py", "--resume", f"train.output_dir={out}", *TINY_OVERRIDES, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    assert "Starting training from iteration 10" in text
    assert "Loading trainer from" in text  # optimizer, iteration and scheduler state
    rows = [m for m in metrics(out / "metrics.json") if "lr" in m]
    iterations = [m["iteration"] for m in rows]
    assert iterations[-1] == 39 and set(range(10, 40)) <= set(iterations)
    # the learning-rate schedule continues where it was: compare with the schedule itself
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py"))
    schedule = instantiate(cfg.lr_multiplier)
    base_lr = cfg.optimizer.lr
    for m in rows:
        if m["iteration"] >= 10:
            assert abs(m["lr"] - base_lr * schedule(m["iteration"] / 40)) < 1e-9, m
    assert (out / "model_final.pth").is_file()


def test_fixed_seed_runs_are_identical(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONWARNINGS="ignore")
    losses = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        proc = subprocess.run(
            train_cmd(out, "train.seed=7", "train.max_iter=4", "train.log_period=1", "train.eval_period=0",
                      "dataloader.train.num_workers=2", "dataloader.test.dataset.names.num_images=2"),
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append([(m["iteration"], m["loss_qfl"], m["loss_bbox"], m["loss_dfl"])
                       for m in metrics(out / "metrics.json") if "loss_qfl" in m])
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]


def test_two_workers_one_image_each_equal_one_worker_two_images(tmp_path):
    out = tmp_path / "losses.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "dist_equivalence.py"), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    single, workers = result["single"], result["workers"]
    assert len(workers) == 2 and workers[0] != workers[1]
    # DDP averages the workers' gradients: the mean of their losses is the loss of the whole batch
    for key in ("loss_qfl", "loss_bbox", "loss_dfl"):
        mean = (workers[0][key] + workers[1][key]) / 2
        assert abs(mean - single[key]) <= 1e-5 * abs(single[key]), (key, mean, single[key])
