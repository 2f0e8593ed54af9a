"""
tools/ablation.py: trains, evaluates and times the variants, writes the report (JSON and
tables), resumes.
"""

import argparse
import io
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from .repo import ROOT


def test_ablation_tool_runs_saves_and_resumes(tmp_path):
    out = tmp_path / "abl"
    datasets = tmp_path / "datasets"
    cmd = [
        sys.executable,
        "tools/ablation.py",
        "--tables",
        "main",
        "--variants",
        "GFL",
        "ATSS",
        "--iters",
        "4",
        "--batch",
        "2",
        "--seeds",
        "0",
        "--output",
        str(out),
        "--timing-images",
        "2",
        "--timing-rounds",
        "1",
        "--results",
        str(tmp_path),
        "--name",
        "abl",
        "--opts",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.dataset.names.num_images=8",
        "dataloader.test.dataset.names.num_images=4",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=str(datasets))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 runs, 0 already done" in proc.stdout
    for name in ("GFL", "ATSS"):
        assert (out / name / "seed0" / "result.json").is_file()
    table = (tmp_path / "abl.md").read_text()
    assert (
        "## 4 iterations" in table
        and "### GFL against ATSS, FCOS and RetinaNet (paper Table 3)" in table
    )
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in table.splitlines()
        if line.startswith("| ")
    }
    # after 4 iterations there may be no detection: AP is a number or "–" (COCOeval's undefined)
    for name in ("GFL", "ATSS"):
        ap, seeds, collapsed, time = rows[name][0], rows[name][-3], rows[name][-2], rows[name][-1]
        assert (ap == "–" or float(ap.split(" ")[0]) >= 0) and seeds == "1"
        assert collapsed == (
            "1" if ap == "–" or float(ap.split(" ")[0]) < 1 else "0"
        )  # 4 iterations: AP < 1
        assert float(time) > 0  # inference time relative to GFL's
    assert (
        rows["RetinaNet"][0] == "…" and rows["RetinaNet"][-3] == "0"
    )  # rows not run are shown as missing
    result = json.loads((out / "ATSS" / "seed0" / "result.json").read_text())
    assert result["variant"] == "ATSS" and result["config"].endswith("atss_R_18_FPN_shapes.py")
    report = json.loads((tmp_path / "abl.json").read_text())
    assert [r["variant"] for r in report["runs"]] == ["ATSS", "GFL"]
    assert {k: report["runs"][0][k] for k in ("seed", "config", "overrides", "iters")} == {
        k: result[k] for k in ("seed", "config", "overrides", "iters")
    }
    assert report["setup"]["iters"] == 4 and set(report["timing"]["seconds_per_image"]) == {
        "GFL",
        "ATSS",
    }

    # --report renders the same tables from the JSON alone
    (tmp_path / "abl.md").unlink()
    proc = subprocess.run(
        [
            sys.executable,
            "tools/ablation.py",
            "--report",
            "--results",
            str(tmp_path),
            "--name",
            "abl",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0 and (tmp_path / "abl.md").read_text() == table

    # a second invocation finds both runs done and retrains nothing
    proc = subprocess.run(
        cmd + ["--skip-timing"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0 and "2 runs, 2 already done, 0 to go" in proc.stdout, proc.stdout[
        -2000:
    ]
    assert "training" not in proc.stdout


def test_report_shows_the_v2_predictor_output_over_training(tmp_path):
    from gfl_studies.ablation import render
    from gfl_studies.reports import read_metrics_series

    # the series as the ablation reads it from a run's metrics.json
    logged = [
        {"iteration": 9, "dgqp_quality_mean": 0.59, "dgqp_quality_std": 0.001, "total_loss": 2.0},
        {"iteration": 19, "total_loss": 1.5},
        {"iteration": 39, "dgqp_quality_mean": 0.7, "dgqp_quality_std": 0.1},
        {"bbox/AP": 1.0},
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in logged))
    series = read_metrics_series(str(tmp_path), ("dgqp_quality_mean", "dgqp_quality_std"))
    assert [r["iteration"] for r in series] == [10, 40]
    assert read_metrics_series(str(tmp_path), ("no_such_scalar",)) == []

    def run(name, seed, quality=None):
        r = dict(variant=name, seed=seed, iters=40, metrics={"AP": 30.0 + seed})
        return dict(r, quality_series=quality) if quality else r

    other = [dict(row, dgqp_quality_mean=row["dgqp_quality_mean"] + 0.1) for row in series]
    data = dict(
        setup=dict(iters=40, batch=8, device="cpu", date="d"),
        tables=["v2"],
        runs=[run("GFL", 0), run("GFL V2", 0, series), run("GFL V2", 1, other)],
    )
    text = render(data)
    assert (
        "| variant | iteration 4 | iteration 10 | iteration 20 | iteration 30 | iteration 40 |"
        in text
    )
    # iteration 4 and 10: the record at 10 (0.59 and 0.69 averaged); 30 and 40: the one at 40
    assert (
        "| GFL V2 | 0.640 / 0.001 | 0.640 / 0.001 | 0.640 / 0.001 | 0.750 / 0.100 | 0.750 / 0.100 |"
        in text
    )
    header = "GFL V2's quality predictor at the positives"
    assert "| GFL |" not in text.split(header)[1]  # V1 logs no predictor output
    assert header not in render(dict(data, runs=[run("GFL", 0)]))


def test_distillation_rows_train_their_teacher_then_the_student_alone_and_taught(tmp_path):
    out = tmp_path / "ld"
    data = [
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.dataset.names.num_images=8",
        "dataloader.test.dataset.names.num_images=4",
        "train.check_bins=0",
    ]
    cmd = [
        sys.executable,
        "tools/ablation.py",
        "--tables",
        "ld",
        "--iters",
        "4",
        "--batch",
        "2",
        "--seeds",
        "0",
        "--output",
        str(out),
        "--timing-images",
        "2",
        "--timing-rounds",
        "1",
        "--results",
        str(tmp_path),
        "--name",
        "ld",
        "--teacher-opts",
        "train.max_iter=3",
        "dataloader.train.total_batch_size=2",
        "--opts",
        *data,
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    teacher = json.loads((out / "teacher" / "result.json").read_text())
    assert teacher["config"] == "Synthetic/gfl_R_18_FPN_shapes.py" and "AP" in teacher["metrics"]
    taught = json.loads((out / "Student_LD" / "seed0" / "result.json").read_text())
    checkpoint = out / "teacher" / "model_final.pth"
    assert f"distillation.teacher.checkpoint={checkpoint}" in taught["overrides"]
    alone = json.loads((out / "Student" / "seed0" / "result.json").read_text())
    assert not any(o.startswith("distillation.") for o in alone["overrides"])

    # the taught student's checkpoint is a plain student's
    def keys(name):
        return sorted(
            torch.load(out / name / "seed0" / "model_final.pth", weights_only=False)["model"]
        )

    assert keys("Student_LD") == keys("Student")
    table = (tmp_path / "ld.md").read_text()
    assert "### Localization Distillation" in table and "| Student + LD |" in table
    assert (
        "LD teacher: configs/Synthetic/gfl_R_18_FPN_shapes.py on its own schedule (train.seed=0)"
        in table
    )
    step = next(line for line in table.splitlines() if line.startswith("Training step"))
    assert "Student " in step and "Student + LD " in step and "x)" in step


def test_a_given_teacher_is_used_as_it_is_and_a_missing_one_is_refused(tmp_path):
    from gfl_studies.ablation import ensure_teacher, run_overrides

    (tmp_path / "teacher.pth").write_bytes(b"")
    args = argparse.Namespace(
        teacher=str(tmp_path / "teacher.pth"),
        output=str(tmp_path / "out"),
        iters=4,
        batch=2,
        opts=[],
    )
    assert ensure_teacher(args)["checkpoint"] == args.teacher
    _, overrides = run_overrides(args, "Student + LD", 0, str(tmp_path / "run"))
    assert f"distillation.teacher.checkpoint={args.teacher}" in overrides
    assert not (tmp_path / "out" / "teacher").exists()  # nothing trained
    with pytest.raises(SystemExit, match="--teacher: no checkpoint at"):
        ensure_teacher(argparse.Namespace(**dict(vars(args), teacher=str(tmp_path / "none.pth"))))


def test_progress_is_read_from_detectron2s_printed_metrics():
    from detectron2.utils.events import CommonMetricPrinter, EventStorage

    from gfl_studies.ablation import printed_progress

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("detectron2.utils.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with EventStorage(0) as storage:
            for it in range(40):
                storage.iter = it
                storage.put_scalars(time=0.5, data_time=0.01, total_loss=2.0 - 0.01 * it)
                if it == 39:
                    CommonMetricPrinter(max_iter=100, window_size=20).write()
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    shown = printed_progress(line)
    assert shown["iteration"] == 39 and shown["eta"] == "0:00:30"
    # the printer's median of the last 20 losses, as printed
    assert float(shown["total_loss"]) == pytest.approx(2.0 - 0.01 * 29.5, abs=1e-3)
    assert printed_progress("[detectron2]: Starting training from iteration 0") is None
