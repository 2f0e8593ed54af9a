"""
Training that can be trusted: checked checkpoints and overrides, named non-finite losses,
clipping, resume, determinism, several workers.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from gfl_d2.checkpoint import CheckedCheckpointer, holds_layer, require_trained_head
from gfl_d2.errors import WeightsError
from gfl_d2.model_zoo import DEFAULT_CONFIG
from gfl_d2.testing import make_instances, shapes_image, tiny_gfl
from gfl_d2.train_loop import SimpleTrainer, clip_gradients

from .repo import ROOT, TINY_OVERRIDES, read_metrics


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
    with pytest.raises(
        RuntimeError, match="None of the checkpoint's 2 tensors fits this GFL model"
    ):
        CheckedCheckpointer(fresh).load(str(tmp_path / "foreign.pth"))
    with pytest.raises(RuntimeError, match="no model weights"):
        CheckedCheckpointer(fresh).load(str(tmp_path / "nomodel.pth"))
    CheckedCheckpointer(fresh).load(str(tmp_path / "backbone.pth"))  # partial: fine
    CheckedCheckpointer(fresh).load(str(good))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_weights_without_the_head_are_refused_for_evaluation(tmp_path):
    """
    An ImageNet-like checkpoint (backbone only) loads, but evaluating with it stops, naming the
    head tensors.
    """
    model = tiny_gfl()
    backbone_only = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save({"model": backbone_only}, tmp_path / "backbone.pth")
    CheckedCheckpointer(model, save_dir=str(tmp_path)).save("trained")

    checkpointer = CheckedCheckpointer(tiny_gfl())
    checkpointer.load(str(tmp_path / "backbone.pth"))
    with pytest.raises(
        WeightsError,
        match=r".*backbone.pth holds no trained weights for \d+ tensor\(s\) of the "
        r"detector's head \(head\.bbox_pred\.bias, head\.bbox_pred\.weight, .*"
        r"train.init_checkpoint=/path/to/model_final.pth",
    ):
        require_trained_head(checkpointer, str(tmp_path / "backbone.pth"))
    # another number of classes: the classification layer is not loaded, so it is not trained either
    other = tiny_gfl(num_classes=5)
    checkpointer = CheckedCheckpointer(other)
    checkpointer.load(str(tmp_path / "trained.pth"))
    with pytest.raises(
        WeightsError,
        match=r"2 tensor\(s\) of the detector's head "
        r"\(head.cls_score.bias, head.cls_score.weight\)",
    ):
        require_trained_head(checkpointer, "trained.pth")
    checkpointer = CheckedCheckpointer(tiny_gfl())
    checkpointer.load(str(tmp_path / "trained.pth"))
    require_trained_head(checkpointer, "trained.pth")  # the whole detector: fine


def test_a_checkpoint_holding_the_box_layer_fixes_n(tmp_path):
    model = tiny_gfl(reg_max=8)
    CheckedCheckpointer(model, save_dir=str(tmp_path)).save("n8")
    path = str(tmp_path / "n8.pth")
    assert holds_layer(path, tiny_gfl(reg_max=8), "head.bbox_pred.weight")
    assert not holds_layer(
        path, tiny_gfl(reg_max=16), "head.bbox_pred.weight"
    )  # another n: re-initialised
    assert not holds_layer("", model, "head.bbox_pred.weight")
    assert not holds_layer(
        "detectron2://ImageNetPretrained/torchvision/R-50.pkl", model, "head.bbox_pred.weight"
    )
    assert not holds_layer(str(tmp_path / "missing.pth"), model, "head.bbox_pred.weight")


def test_unknown_config_key_is_refused_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "train.max_itr=5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path)),
    )
    assert proc.returncode != 0
    assert (
        "config key 'train.max_itr' does not exist: train has no 'max_itr'; "
        "did you mean 'train.max_iter'?" in proc.stderr
    )
    assert not (tmp_path / "shapes").exists()  # nothing was generated or trained


# ---------------------------------------------------------------- non-finite losses, clipping
def test_non_finite_loss_stops_with_the_term_and_iteration():
    model = tiny_gfl()
    data = [
        {
            "image": shapes_image([], []),
            "instances": make_instances([[10, 10, 50, 60]], [1], (128, 128)),
        }
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = SimpleTrainer(model, iter([data] * 10), optimizer)
    with torch.no_grad():
        model.head.cls_score.bias[1] = float("nan")
    with pytest.raises(
        FloatingPointError,
        match=r"iteration=3!\nloss_dict = (.|\n)*non-finite loss terms: loss_qfl",
    ):
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


def train_cmd(out_dir, *extra):
    return [
        sys.executable,
        "tools/train_net.py",
        f"train.output_dir={out_dir}",
        *TINY_OVERRIDES,
        *extra,
    ]


def test_killed_run_resumes_where_it_stopped(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONWARNINGS="ignore")
    out = tmp_path / "out"
    args = [
        "train.max_iter=40",
        "train.checkpointer.period=10",
        "train.log_period=1",
        "train.eval_period=0",
    ]
    proc = subprocess.Popen(
        train_cmd(out, *args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        not (out / "last_checkpoint").is_file()
        or "0000009" not in (out / "last_checkpoint").read_text()
    ):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(m["iteration"] for m in read_metrics(out / "metrics.json"))
    assert killed_at < 39
    resumed = subprocess.run(
        [
            sys.executable,
            "tools/train_net.py",
            "--resume",
            f"train.output_dir={out}",
            *TINY_OVERRIDES,
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    assert "Starting training from iteration 10" in text
    assert "Loading trainer from" in text  # optimizer, iteration and scheduler state
    rows = [m for m in read_metrics(out / "metrics.json") if "lr" in m]
    iterations = [m["iteration"] for m in rows]
    assert iterations[-1] == 39 and set(range(10, 40)) <= set(iterations)
    # the learning-rate schedule continues where it was: compare with the schedule itself
    cfg = LazyConfig.load(DEFAULT_CONFIG)  # what tools/train_net.py runs without --config-file
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
            train_cmd(
                out,
                "train.seed=7",
                "train.max_iter=4",
                "train.log_period=1",
                "train.eval_period=0",
                "dataloader.train.num_workers=2",
                "dataloader.test.dataset.names.num_images=2",
            ),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append(
            [
                (m["iteration"], m["loss_qfl"], m["loss_bbox"], m["loss_dfl"])
                for m in read_metrics(out / "metrics.json")
                if "loss_qfl" in m
            ]
        )
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]


def test_two_workers_one_image_each_equal_one_worker_two_images(tmp_path):
    out = tmp_path / "losses.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.dist_equivalence", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    single, workers = result["single"], result["workers"]
    assert len(workers) == 2 and workers[0] != workers[1]
    # DDP averages the workers' gradients: the mean of their losses is the loss of the whole batch
    for key in ("loss_qfl", "loss_bbox", "loss_dfl"):
        mean = (workers[0][key] + workers[1][key]) / 2
        assert abs(mean - single[key]) <= 1e-5 * abs(single[key]), (key, mean, single[key])
