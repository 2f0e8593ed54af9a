"""
Train on a dataset folder through the command line, as a user does: each of
the three layouts, no Python and no class count typed; FCOS the same way; the
yacs entry point; fine-tuning from a converted COCO checkpoint with another
number of classes; and what the run says when the data or the command is wrong.
"""

import os

import pytest
import torch

from gfl_d2.convert import convert_checkpoint
from gfl_d2.data import write_layout
from gfl_studies.bars import BARS_CLASSES, BARS_IDS, BarsConfig, generate_bars_split

from .mmdet_gfl_reference import mmdet_gfl_state_dict
from .repo import read_metrics, run_tool

SMALL = BarsConfig(min_width=64, max_width=112, min_height=48, max_height=96, max_objects=4)
FAST = [
    "dataset.min_size=0",  # the images' own (small) size
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "train.log_period=1",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("own_data")
    train = generate_bars_split(str(base / "rendered" / "train"), "train", 8, seed=0, cfg=SMALL)
    val = generate_bars_split(str(base / "rendered" / "val"), "val", 3, seed=1, cfg=SMALL)
    out = {}
    for layout in ("coco", "voc", "yolo"):
        root = base / f"data_{layout}"
        write_layout(layout, str(root), "train", train, BARS_CLASSES, BARS_IDS)
        write_layout(layout, str(root), "val", val, BARS_CLASSES, BARS_IDS)
        out[layout] = root
    return out


def _log(proc):
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("layout", ["coco", "voc", "yolo"])
def test_each_layout_trains_and_evaluates_from_the_command_line(tmp_path, folders, layout):
    out = tmp_path / "out"
    proc = run_tool(
        [
            "tools/train_net.py",
            "--config-file",
            "configs/OwnData/gfl_R_18_FPN_scratch.py",
            f"dataset.root={folders[layout]}",
            "train.max_iter=4",
            "train.eval_period=2",
            "train.check_bins=8",
            "model.test_score_thresh=0.0",  # an untrained model's scores: something to evaluate
            f"train.output_dir={out}",
        ]
        + FAST
    )
    log = _log(proc)
    # the layout was detected, the classes and their number came from the files
    assert (
        f"{layout} layout, split 'train'" in log and "4 classes: bar, ellipse, cross, frame" in log
    )
    assert "model.num_classes = 4, the classes of the dataset in" in log
    assert "GFL bins: " in log
    # evaluated at iteration 2 and at the end: AP, per-class AP, a picture each time, the best
    # checkpoint
    assert (
        "copypaste: AP,AP50,AP75,APs,APm,APl" in log
        and "Per-category bbox AP" in log
        and "| ellipse" in log
    )
    evaluated = [m["iteration"] for m in read_metrics(out / "metrics.json") if "bbox/AP" in m]
    assert evaluated == [
        1,
        4,
    ]  # detectron2's record: the iteration index, then the count after training
    assert any("bbox/AP-frame" in m for m in read_metrics(out / "metrics.json"))
    for iteration in (2, 4):
        picture = out / f"pr_curves_data_{layout}_val_iter_{iteration:07d}.png"
        assert picture.is_file() and picture.stat().st_size > 10_000, sorted(os.listdir(out))
    assert (out / "model_best.pth").is_file() and (out / "model_final.pth").is_file()
    assert "Saved first model at" in log


def test_fcos_trains_on_a_dataset_folder_the_same_way(tmp_path, folders):
    out = tmp_path / "out"
    proc = run_tool(
        [
            "tools/train_net.py",
            "--config-file",
            "configs/OwnData/fcos_R_18_FPN_scratch.py",
            f"dataset.root={folders['voc']}",
            "train.max_iter=2",
            "train.eval_period=0",
            f"train.output_dir={out}",
        ]
        + FAST
    )
    log = _log(proc)
    assert "model.num_classes = 4" in log and "copypaste: AP" in log and "loss_fcos_cls" in log


def test_yacs_entry_point_takes_a_dataset_folder(tmp_path, folders):
    out = tmp_path / "out"
    proc = run_tool(
        [
            "projects/GFL/train_net.py",
            "--config-file",
            "configs/gfl_R_50_FPN_1x.yaml",
            "DATASETS.FOLDER.ROOT",
            str(folders["yolo"]),
            "MODEL.WEIGHTS",
            "",
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.STEPS",
            "(1,)",
            "SOLVER.WARMUP_ITERS",
            "1",
            "DATALOADER.NUM_WORKERS",
            "0",
            "MODEL.GFL.SCORE_THRESH_TEST",
            "0.0",
            "OUTPUT_DIR",
            str(out),
        ]
    )
    log = _log(proc)
    assert "yolo layout, split 'train'" in log and "yolo layout, split 'val'" in log
    assert (
        "copypaste: AP" in log and "| frame" in log
    )  # evaluated on the folder's val split, per class
    assert list(out.glob("pr_curves_data_yolo_val_*.png"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A COCO GFL R-50 checkpoint in MMDetection's format (random weights), converted."""
    base = tmp_path_factory.mktemp("coco_gfl")
    mmdet = base / "gfl_r50_fpn_1x_coco.pth"
    torch.save({"state_dict": mmdet_gfl_state_dict("R-50 1x"), "meta": {}}, mmdet)
    out = base / "converted.pth"
    convert_checkpoint(str(mmdet), str(out))
    return out


def test_fine_tuning_from_a_converted_coco_checkpoint(tmp_path, folders, converted):
    out = tmp_path / "out"
    proc = run_tool(
        [
            "tools/train_net.py",
            "--config-file",
            "configs/OwnData/gfl_R_50_FPN_finetune.py",
            f"dataset.root={folders['coco']}",
            f"train.init_checkpoint={converted}",
            "dataset.min_size=64",
            "dataset.max_size=128",
            "train.max_iter=1",
            "train.eval_period=0",
            "train.check_bins=2",
            "dataloader.train.total_batch_size=1",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            f"train.output_dir={out}",
        ]
    )
    log = _log(proc)
    assert "Re-initialised 2 tensor(s) instead of loading them" in log
    assert (
        "head.cls_score.weight: (80, 256, 3, 3) in the checkpoint, (4, 256, 3, 3) in the model: "
        "the "
        "classification layer: the checkpoint has 80 classes, the model 4"
    ) in log
    assert "head.cls_score.bias: (80,) in the checkpoint, (4,) in the model" in log
    assert "bias at the prior probability 0.01" in log
    # all else loaded: fvcore lists only the re-initialised layer as not found, and nothing as
    # unused
    missing = log.split("not found in the checkpoint:")[1].strip().splitlines()[0]
    assert missing.endswith("head.cls_score.{bias, weight}") and "not used by the model" not in log
    # the bins: n is the checkpoint's, so the check reports the fit and never advises another n
    assert f"n = 16 is fixed by the trained box layer of {converted}" in log
    assert "reg_max=" not in log and "would cover 99%" not in log
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    start = torch.load(converted, weights_only=True)["model"]
    key = "backbone.bottom_up.stem.conv1.weight"  # frozen: still the COCO weights
    assert torch.equal(final[key], start[key])


def test_yacs_fine_tuning_config_checks_the_data_and_the_bins(tmp_path, folders, converted):
    """
    configs/OwnData/gfl_R_50_FPN_finetune.yaml: the same checks and loading as the LazyConfig
    path.
    """
    out = tmp_path / "out"
    small = [
        "INPUT.MIN_SIZE_TRAIN",
        "(64,)",
        "INPUT.MAX_SIZE_TRAIN",
        "128",
        "INPUT.MIN_SIZE_TEST",
        "64",
        "INPUT.MAX_SIZE_TEST",
        "128",
        "SOLVER.IMS_PER_BATCH",
        "1",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.STEPS",
        "(1,)",
        "SOLVER.WARMUP_ITERS",
        "1",
        "TEST.EVAL_PERIOD",
        "0",
        "DATALOADER.NUM_WORKERS",
        "0",
    ]
    cmd = [
        "projects/GFL/train_net.py",
        "--config-file",
        "configs/OwnData/gfl_R_50_FPN_finetune.yaml",
    ]
    proc = run_tool(
        cmd
        + [
            "DATASETS.FOLDER.ROOT",
            folders["voc"],
            "MODEL.WEIGHTS",
            converted,
            *small,
            "OUTPUT_DIR",
            out,
        ]
    )
    log = _log(proc)
    assert (
        "voc layout, split 'train'" in log and "Dataset check passed: 7 images" in log
    )  # the empty one filtered
    assert "Re-initialised 2 tensor(s) instead of loading them" in log
    assert "GFL bins: " in log and f"n = 16 is fixed by the trained box layer of {converted}" in log
    assert "MODEL.GFL.REG_MAX" not in log and "copypaste: AP" in log
    assert (out / "model_final.pth").is_file()
    # its mandatory values are named with how to set them
    proc = run_tool(cmd + ["OUTPUT_DIR", tmp_path / "o2"], check=False)
    assert proc.returncode != 0 and "Traceback" not in _log(proc)
    assert "needs a value for DATASETS.FOLDER.ROOT, MODEL.WEIGHTS" in _log(proc)
    assert "MODEL.WEIGHTS: the weights to start from: MODEL.WEIGHTS /path/to/model.pth" in _log(
        proc
    )


def test_yacs_training_from_scratch_advises_n(tmp_path, folders):
    """
    From scratch the box layer is free: the bin check advises n as MODEL.GFL.REG_MAX when the
    bins do not fit.
    """
    proc = run_tool(
        [
            "projects/GFL/train_net.py",
            "--config-file",
            "configs/gfl_R_50_FPN_1x.yaml",
            "DATASETS.FOLDER.ROOT",
            folders["yolo"],
            "MODEL.WEIGHTS",
            "",
            "MODEL.BACKBONE.FREEZE_AT",
            "0",
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.STEPS",
            "(1,)",
            "SOLVER.WARMUP_ITERS",
            "1",
            "DATALOADER.NUM_WORKERS",
            "0",
            "OUTPUT_DIR",
            tmp_path / "out",
        ]
    )
    log = _log(proc)
    assert "GFL bins: " in log and "would cover 99%" in log and "fixed by" not in log
    # at 64 px the targets lie within a few strides, far inside n = 16
    assert "far inside the 16 bins: MODEL.GFL.REG_MAX " in log


def test_config_without_a_dataset_root_says_what_to_add(tmp_path):
    proc = run_tool(
        [
            "tools/train_net.py",
            "--config-file",
            "configs/OwnData/gfl_R_18_FPN_scratch.py",
            f"train.output_dir={tmp_path}",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert "needs a value for dataset.root" in _log(proc) and "dataset.root=/path/to/data" in _log(
        proc
    )
    proc = run_tool(
        [
            "tools/train_net.py",
            "--config-file",
            "configs/OwnData/gfl_R_50_FPN_finetune.py",
            f"dataset.root={tmp_path}",
            f"train.output_dir={tmp_path}",
        ],
        check=False,
    )
    assert "needs a value for train.init_checkpoint" in _log(proc)


def test_a_broken_dataset_stops_before_training_with_the_line_named(tmp_path, folders):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(folders["voc"], root)
    xml = next(
        p for p in sorted((root / "Annotations").glob("train_*.xml")) if "<name>" in p.read_text()
    )
    text = xml.read_text()
    xml.write_text(
        text.replace("<name>bar</name>", "<name>pole</name>")
        .replace("<name>frame</name>", "<name>pole</name>")
        .replace("<name>cross</name>", "<name>pole</name>")
        .replace("<name>ellipse</name>", "<name>pole</name>")
    )
    (root / "labels.txt").write_text("\n".join(BARS_CLASSES) + "\n")
    proc = run_tool(
        [
            "tools/train_net.py",
            "--config-file",
            "configs/OwnData/gfl_R_18_FPN_scratch.py",
            f"dataset.root={root}",
            f"train.output_dir={tmp_path / 'out'}",
        ]
        + FAST,
        check=False,
    )
    log = _log(proc)
    assert proc.returncode != 0 and "Starting training" not in log
    assert f"{xml}:" in log and "unknown class name 'pole'" in log
