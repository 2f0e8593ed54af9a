"""
The benchmark driver (gfl_studies.benchmark), shared by tools/benchmark.py and
the GPU check: the code paths run (tiny sizes, one repeat; no timing
assertions), the reports, and the GPU check's summary rows.
"""

import json
import os
import subprocess
import sys

import pytest

from gfl_studies.gpu_check import benchmark_rows
from gfl_studies.mmdet_peer import SKIP_NOTE, run_peer_benchmark
from gfl_studies.mmdet_peer import render as render_peer
from gfl_studies.mmdet_runtime import mmdet_available

from .repo import ROOT, run_tool


def test_benchmark_smoke_writes_its_report(tmp_path):
    proc = run_tool(
        [
            "tools/benchmark.py",
            "--smoke",
            "--device",
            "cpu",
            "--results",
            tmp_path,
            "--name",
            "bench",
        ]
    )
    result = json.loads((tmp_path / "bench.json").read_text())
    assert (
        set(result["results"]) == {"gfl", "gflv2", "fcos", "retinanet"}
        and result["mode"] == "smoke"
    )
    lines = set(result["results"]["gfl"])
    for kind in ("infer", "train", "assign", "peak memory"):
        assert any(kind in line for line in lines), kind
    for line in lines:
        for model in ("gfl", "gflv2", "fcos", "retinanet"):
            stats = result["results"][model][line]
            assert stats["median"] > 0 and stats["min"] <= stats["median"] <= stats["max"]
        for ratio in ("gfl/fcos", "gfl/retinanet", "gflv2/gfl"):
            assert result["ratios"][line][ratio] > 0
    md = (tmp_path / "bench.md").read_text()
    assert (
        "| measure |" in md and "gfl/fcos" in md and "gflv2/gfl" in md and md.strip() in proc.stdout
    )
    # --report renders the same Markdown from the JSON alone
    (tmp_path / "bench.md").unlink()
    run_tool(["tools/benchmark.py", "--report", "--results", tmp_path, "--name", "bench"])
    assert (tmp_path / "bench.md").read_text() == md
    # the GPU check's summary rows come from a result of this driver: one per inference / training
    # line
    rows = benchmark_rows(result)
    assert [r["step"] for r in rows] == [
        "bench inference 96x128 b1 fp32",
        "bench inference 64x96 b2 fp32",
        "bench training 64x96 b2 fp32",
    ]
    assert all(
        r["ok"]
        and "(memory: GPU only)" in r["result"]
        and "speed GFL/FCOS" in r["result"]
        and "V2/V1 time" in r["result"]
        for r in rows
    )


def test_gpu_check_report_renders_again_from_its_json(tmp_path):
    rows = [
        dict(step="tests (e2e models, entry points)", ok=True, seconds=102.4, result="45 passed"),
        dict(
            step="bench inference 800x1333 b1 fp32",
            ok=True,
            seconds=None,
            result="GFL 71.1 img/s 243 MiB",
        ),
        dict(step="export onnx on cuda", ok=False, seconds=15.0, result="failed: see the log"),
    ]
    (tmp_path / "gc.json").write_text(
        json.dumps(dict(header="GPU check, 2026-11-26, H100", rows=rows))
    )
    # the one entry point, as a user runs it, with this interpreter
    proc = subprocess.run(
        ["bash", "tools/gpu_check.sh", "--report", "--results", str(tmp_path), "--name", "gc"],
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        check=True,
    )
    md = (tmp_path / "gc.md").read_text()
    assert (
        md.startswith("GPU check, 2026-11-26, H100\n\n| step | ok | s | result |")
        and md.strip() == proc.stdout.strip()
    )
    assert "| tests (e2e models, entry points) | yes | 102 | 45 passed |" in md
    assert "| bench inference 800x1333 b1 fp32 | yes |  | GFL 71.1 img/s 243 MiB |" in md
    assert "| export onnx on cuda | **NO** | 15 | failed: see the log |" in md


def _line(kind, batch, precision=None):
    name = f"{kind} 800x1333 b{batch}" + (f" {precision} AMP" if precision else "")
    label = f"{name} ({'s/img' if kind == 'infer' else 's/iter'})"
    return label, dict(
        kind=kind,
        size=[800, 1333],
        batch=batch,
        precision=precision,
        boxes=0,
        memory=f"{name} peak memory (MiB, GPU, one run)",
    )


def _timed(seconds, mib):
    return {"median": seconds, "min": seconds, "max": seconds, "runs": 10}, {
        "median": mib,
        "min": mib,
        "max": mib,
        "runs": 1,
    }


def test_gpu_check_reports_what_ran_beside_what_failed():
    """A line where FCOS fails (detectron2's FCOS under fp16 autocast) still shows GFL's numbers."""
    amp, amp_meta = _line("train", 8, "fp16")
    fp32, fp32_meta = _line("train", 8)
    gfl, fcos, v2 = {}, {}, {}
    # GFL 62.3 img/s at 6366.6 MiB on both lines; FCOS 51.0 img/s in fp32 and failing under AMP; V2
    # 59.0 img/s
    for label, meta in ((amp, amp_meta), (fp32, fp32_meta)):
        gfl[label], gfl[meta["memory"]] = _timed(8 / 62.3, 6366.6)
    fcos[amp] = dict(
        error="RuntimeError: Index put requires the source and destination dtypes match"
    )
    fcos[fp32], fcos[fp32_meta["memory"]] = _timed(8 / 51.0, 6366.6)
    data = dict(lines={amp: amp_meta, fp32: fp32_meta}, results=dict(gfl=gfl, fcos=fcos))
    failed, both = benchmark_rows(data)
    assert (
        failed["step"] == "bench training 800x1333 b8 fp16 AMP"
        and both["step"] == "bench training 800x1333 b8 fp32"
    )
    assert (
        failed["ok"]
        and "GFL 62.3 img/s 6367 MiB" in failed["result"]
        and "FCOS FAILED: RuntimeError" in failed["result"]
    )
    assert both["ok"] and "speed GFL/FCOS 1.222" in both["result"] and "V2/V1" not in both["result"]
    # with GFL V2 on the line: its time relative to V1 (62.3 / 59.0 img/s), memory 7003.3 / 6366.6
    v2[fp32], v2[fp32_meta["memory"]] = _timed(8 / 59.0, 7003.3)
    (row,) = benchmark_rows(
        dict(lines={fp32: fp32_meta}, results=dict(gfl=gfl, fcos=fcos, gflv2=v2))
    )
    assert "V2/V1 time 1.056, memory 1.100" in row["result"]
    gfl_failed = dict(gfl, **{fp32: dict(error="RuntimeError: x")})
    (row,) = benchmark_rows(dict(lines={fp32: fp32_meta}, results=dict(gfl=gfl_failed, fcos=fcos)))
    assert not row["ok"] and "GFL FAILED" in row["result"] and "FCOS 51.0 img/s" in row["result"]


@pytest.mark.skipif(mmdet_available(), reason="checks the note printed when MMDetection is missing")
def test_mmdet_peer_is_skipped_with_a_one_line_note(tmp_path):
    proc = run_tool(
        [
            "tools/benchmark.py",
            "--peer",
            "mmdet",
            "--smoke",
            "--device",
            "cpu",
            "--results",
            tmp_path,
            "--name",
            "peer",
        ]
    )
    assert proc.stdout.strip().splitlines()[-1] == SKIP_NOTE
    assert not (tmp_path / "peer.json").exists()


@pytest.mark.skipif(
    not mmdet_available(), reason="MMDetection (mmdet, mmengine, mmcv) is not installed"
)
def test_mmdet_peer_smoke_measures_both_frameworks_and_the_profile(tmp_path):
    result = run_peer_benchmark("smoke", "cpu")
    labels = set(result["lines"])
    assert {label.split()[0] for label in labels} == {"infer", "train", "assign"}
    for label in labels:
        for name in ("gfl", "mmdet"):
            assert result["results"][name][label]["median"] > 0
        assert result["ratios"][label]["gfl/mmdet"] > 0
    infer = next(label for label in labels if label.startswith("infer"))
    assert (
        result["ratios"][infer]["gfl_frozen/mmdet"] > 0
    )  # the CPU's frozen inference beside eager
    profile = result["profile"]
    assert set(profile["stages"]) == {"gfl", "gfl_frozen", "mmdet"}
    assert {"preprocess", "backbone+FPN", "head", "decode+NMS"} <= set(profile["stages"]["mmdet"])
    assert all(
        0 < share <= 1
        for per in profile["conv_share"].values()
        for share in per.values()
        if share == share
    )
    text = render_peer(result)
    assert "gfl-d2 / MMDetection" in text and "Where the time goes" in text
