"""
tools/quickstart.py: the quick start run in a fresh clone, timed, its AP read
from detectron2's metrics.json and its seed from detectron2's log.
"""

import io
import json
import logging

import pytest
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, EventStorage

from gfl_studies.quickstart import bbox_result, parse_log, render, run_once, summarize

from .repo import ROOT, TINY_OVERRIDES, run_tool


def seed_log_lines():
    """What detectron2's seed logging writes, captured from ``seed_all_rng`` itself."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("detectron2.utils.env")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        seed_all_rng(None)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines(keepends=True)


def test_reads_the_seed_that_detectron2_logs():
    lines = seed_log_lines()
    (seed_line,) = [line for line in lines if "random seed" in line]
    assert parse_log(lines)["seed"] == int(seed_line.split()[-1])
    assert parse_log(["no result here\n"]) == dict(
        seed=None, iteration_seconds=None, data_seconds=None
    )


def test_reads_the_bbox_result_from_the_one_metrics_json_of_the_clone(tmp_path):
    assert bbox_result(str(tmp_path)) is None  # the run wrote nothing
    run = tmp_path / "output" / "run"
    run.mkdir(parents=True)
    records = [
        dict(iteration=9, total_loss=2.0),
        dict(iteration=10, **{"bbox/AP": 42.125, "bbox/AP75": 44.0, "segm/AP": 1.0}),
    ]
    (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bbox_result(str(tmp_path)) == dict(AP=42.125, AP75=44.0)  # not the segm task's
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").write_text("")
    with pytest.raises(RuntimeError, match="more than one metrics.json"):
        bbox_result(str(tmp_path))


def test_reads_the_iteration_and_loading_times_that_detectron2_prints():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("detectron2.utils.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    printer = CommonMetricPrinter(max_iter=100, window_size=20)
    try:
        with EventStorage(0) as storage:
            for it in range(60):
                storage.iter = it
                # iteration times 0.25 + 0.001 * it, loading 0.01 s then 0.03 s
                storage.put_scalars(
                    time=0.25 + 0.001 * it,
                    data_time=0.01 if it < 40 else 0.03,
                    total_loss=1.0,
                    smoothing_hint=False,
                )
                if (it + 1) % 20 == 0:
                    printer.write()
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines(keepends=True)
    assert len(lines) == 3 and all("last_data_time" in line for line in lines)
    parsed = parse_log(lines)
    # the mean of all 60 logged iteration times (in training, IterationTimer leaves out the first
    # ones)
    assert parsed["iteration_seconds"] == pytest.approx(0.25 + 0.001 * 29.5, abs=1e-4)
    # the 20-iteration means of data_time: 0.01, 0.01, 0.03
    assert parsed["data_seconds"] == pytest.approx((0.01 + 0.01 + 0.03) / 3, abs=1e-4)


def test_summary_and_targets():
    def run(ap, seconds, rc=0):
        return dict(
            returncode=rc,
            seconds=seconds,
            bbox=dict(AP=ap, AP50=60.0, AP75=40.0),
            seed=1,
            phases=None,
            load_before=0.1,
        )

    met = summarize([run(42.5, 590), run(42.0, 600)])
    assert met["ap_target_met"] and met["time_target_met"] and met["finished"] == 2
    assert not summarize([run(42.5, 590), run(41.9, 500)])["ap_target_met"]
    assert not summarize([run(42.5, 601)])["time_target_met"]
    failed = summarize([run(43.0, 500), dict(run(0, 5, rc=1), bbox=None)])
    assert failed["finished"] == 1 and not failed["ap_target_met"] and not failed["time_target_met"]


def test_a_failing_run_is_recorded_with_its_log_tail(tmp_path):
    record = run_once(ROOT, str(tmp_path / "run"), ["no_such_key_anywhere=1"], log=lambda *a: None)
    assert (
        record["returncode"] != 0
        and record["bbox"] is None
        and "no_such_key_anywhere" in record["log_tail"]
    )
    assert not (tmp_path / "run" / "clone").exists()  # removed unless --keep
    # a run past its time limit is killed even while it prints nothing (here: still importing)
    slow = run_once(ROOT, str(tmp_path / "slow"), [], timeout=0.5, log=lambda *a: None)
    assert slow["returncode"] < 0 and slow["seconds"] < 30 and slow["bbox"] is None
    with pytest.raises(FileExistsError, match="fresh clone"):
        (tmp_path / "again" / "clone").mkdir(parents=True)
        run_once(ROOT, str(tmp_path / "again"), [], log=lambda *a: None)


def test_tool_runs_the_command_in_a_clone_and_writes_the_report(tmp_path):
    tiny = [
        *TINY_OVERRIDES,
        "train.max_iter=3",
        "train.check_bins=0",
        "train.output_dir=./output/tiny",
    ]
    run_tool(
        [
            "tools/quickstart.py",
            "--runs",
            "1",
            "--workdir",
            tmp_path / "work",
            "--keep",
            "--results",
            tmp_path,
            "--name",
            "qs",
            "--",
            *tiny,
        ]
    )
    data = json.loads((tmp_path / "qs.json").read_text())
    (run,) = data["runs"]
    assert run["returncode"] == 0 and run["command"] == "python tools/train_net.py " + " ".join(
        tiny
    )
    assert isinstance(run["seed"], int) and 0.0 <= run["bbox"]["AP"] <= 100.0
    assert (
        run["cpu_seconds"] > 1.0 and run["other_cpu_seconds"] >= 0.0
    )  # the training's CPU time is its own
    ph = run["phases"]
    assert min(ph.values()) >= 0 and abs(sum(ph.values()) - run["seconds"]) < 1e-6
    # the data was generated inside the clone, not in a shared $DETECTRON2_DATASETS
    assert (tmp_path / "work" / "run1" / "clone" / "datasets" / "shapes").is_dir()
    assert (tmp_path / "work" / "run1" / "clone" / "output" / "tiny" / "model_final.pth").is_file()
    md = (tmp_path / "qs.md").read_text()
    assert md == render(data) and "not met" in md  # 3 iterations reach neither 42 AP
