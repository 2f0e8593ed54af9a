"""
End to end: the entry points train, checkpoint and evaluate on a tiny generated dataset, on CPU.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

from gfl_d2.data import ShapesConfig, write_split

from .repo import ROOT, TINY_OVERRIDES, read_metrics, run_tool


def run(cmd, datasets, timeout=600):
    proc = run_tool(cmd, datasets=datasets, timeout=timeout)
    return proc.stdout + proc.stderr


def test_lazy_train_net_trains_checkpoints_and_evaluates(tmp_path):
    out_dir = tmp_path / "out"
    log = run(
        [
            "tools/train_net.py",
            "train.max_iter=10",
            "train.checkpointer.period=5",
            "train.log_period=2",
            f"train.output_dir={out_dir}",
        ]
        + TINY_OVERRIDES,
        tmp_path / "datasets",
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    # the bins' fit to the data's regression targets is logged before training (the embedded
    # default:
    # targets within ~5 strides, n = 16)
    assert "GFL bins: " in log and "99% within" in log
    # the embedded config trains on CUDA where there is one, and says so
    assert (
        "running on cuda: "
        if torch.cuda.is_available()
        else "running on cpu (no CUDA device available)"
    ) in log
    assert (out_dir / "model_final.pth").is_file() and (out_dir / "model_0000004.pth").is_file()
    metrics = read_metrics(out_dir / "metrics.json")
    losses = [m for m in metrics if "loss_qfl" in m]
    assert losses and all(
        k in losses[-1] for k in ("loss_qfl", "loss_bbox", "loss_dfl", "num_pos_anchors", "lr")
    )
    assert any("bbox/AP" in m for m in metrics)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out_dir))
    # the dataset was generated as COCO json + images
    assert (tmp_path / "datasets" / "shapes" / "annotations" / "instances_val.json").is_file()

    # --eval-only on the checkpoint just written
    log = run(
        [
            "tools/train_net.py",
            "--eval-only",
            f"train.init_checkpoint={out_dir / 'model_final.pth'}",
            f"train.output_dir={tmp_path / 'eval'}",
        ]
        + TINY_OVERRIDES,
        tmp_path / "datasets",
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log

    # the demo draws detections of that checkpoint on images and folders
    val_dir = tmp_path / "datasets" / "shapes" / "val"
    demo_out = tmp_path / "demo"
    run(
        [
            "tools/demo.py",
            "--input",
            str(val_dir / "000000.png"),
            str(val_dir),
            "--output",
            str(demo_out),
            "--confidence-threshold",
            "0.0",
            f"train.init_checkpoint={out_dir / 'model_final.pth'}",
        ]
        + TINY_OVERRIDES,
        tmp_path / "datasets",
    )
    written = sorted(os.listdir(demo_out))
    assert written == sorted(os.listdir(val_dir))
    from PIL import Image

    with Image.open(demo_out / "000001.png") as im:
        assert im.size[0] >= 128 and im.getbbox() is not None


@pytest.mark.skipif(
    0 < torch.cuda.device_count() < 2, reason="2 processes need 2 GPUs, or none (CPU processes)"
)
def test_lazy_train_net_two_cpu_processes(tmp_path):
    out_dir = tmp_path / "out"
    log = run(
        [
            "tools/train_net.py",
            "--num-gpus",
            "2",
            "train.max_iter=3",
            "train.log_period=1",
            f"train.output_dir={out_dir}",
            "train.eval_period=0",
        ]
        + TINY_OVERRIDES,
        tmp_path / "datasets",
    )
    assert "copypaste: AP" in log
    assert (out_dir / "model_final.pth").is_file()


def test_missing_config_file_is_a_clear_error(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", "configs/nope.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode != 0
        and "config file not found: configs/nope.py" in proc.stderr + proc.stdout
    )


def test_yacs_train_net(tmp_path):
    root = tmp_path / "datasets" / "shapes"
    cfg = ShapesConfig(image_size=96, max_objects=6)
    write_split(str(root), "train", 8, seed=0, cfg=cfg, progress=False)
    write_split(str(root), "val", 4, seed=1, cfg=cfg, progress=False)
    out_dir = tmp_path / "out"
    log = run(
        [
            "projects/GFL/train_net.py",
            "--config-file",
            "configs/gfl_R_50_FPN_1x.yaml",
            "MODEL.WEIGHTS",
            "",
            "MODEL.GFL.NUM_CLASSES",
            "5",
            "DATASETS.TRAIN",
            "('shapes_train',)",
            "DATASETS.TEST",
            "('shapes_val',)",
            "INPUT.MIN_SIZE_TRAIN",
            "(96,)",
            "INPUT.MIN_SIZE_TEST",
            "96",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.STEPS",
            "(2,)",
            "SOLVER.WARMUP_ITERS",
            "1",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            str(out_dir),
        ],
        tmp_path / "datasets",
    )
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    # detectron2's default MODEL.DEVICE 'cuda' falls back to the CPU without a GPU, and the log
    # says so
    assert (
        "running on cuda: "
        if torch.cuda.is_available()
        else "running on cpu (no CUDA device available)"
    ) in log
    assert (out_dir / "model_final.pth").is_file()


@pytest.fixture(scope="module")
def r50_backbone_only(tmp_path_factory):
    """A checkpoint of the COCO R-50 GFL's backbone alone, as an ImageNet start gives it."""
    from detectron2.config import LazyConfig, instantiate

    from gfl_d2.model_zoo import get_config_file

    model = instantiate(LazyConfig.load(get_config_file("COCO-Detection/gfl_R_50_FPN_1x.py")).model)
    state = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    path = tmp_path_factory.mktemp("weights") / "backbone_only.pth"
    torch.save({"model": state}, path)
    return path


def _run_entry_point(cmd, env, timeout=300):
    return subprocess.run(
        [sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_eval_only_with_an_untrained_head_stops_after_loading(tmp_path, r50_backbone_only):
    """Evaluating weights that hold the backbone alone would measure an untrained head: refused."""
    cmd = [
        "tools/train_net.py",
        "--config-file",
        "configs/COCO-Detection/gfl_R_50_FPN_1x.py",
        "--eval-only",
        f"train.output_dir={tmp_path / 'out'}",
        f"train.init_checkpoint={r50_backbone_only}",
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = _run_entry_point(cmd, env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.search(
        rf"error: {re.escape(str(r50_backbone_only))} holds no trained weights for \d+ "
        r"tensor\(s\) of the detector's head \(head\.bbox_pred\.bias, head\.bbox_pred\.weight",
        proc.stderr,
    )
    assert "train.init_checkpoint=/path/to/model.pth" in proc.stderr
    # the decision is made on what was loaded: a URL that cannot be fetched says so
    cmd[-1] = "train.init_checkpoint=https://example.invalid/model.pth"
    proc = _run_entry_point(cmd, dict(env, FVCORE_CACHE=str(tmp_path / "cache")))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: cannot fetch https://example.invalid/model.pth" in proc.stderr


def test_yacs_eval_only_with_an_untrained_head_stops_after_loading(tmp_path, r50_backbone_only):
    cmd = [
        "projects/GFL/train_net.py",
        "--config-file",
        "configs/gfl_R_50_FPN_1x.yaml",
        "--eval-only",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "MODEL.WEIGHTS",
        str(r50_backbone_only),
    ]
    proc = _run_entry_point(cmd, dict(os.environ))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: {r50_backbone_only} holds no trained weights for " in proc.stderr
    assert "MODEL.WEIGHTS /path/to/model_final.pth" in proc.stderr
