"""The benchmark's code paths run (tiny sizes, one repeat): no timing assertions here."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--quick", "--smoke", "--device", "cpu", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["results"]) == {"gfl", "gflv2", "fcos", "retinanet"}
    lines = set(result["results"]["gfl"])
    for kind in ("infer", "train", "assign", "peak memory"):
        assert any(kind in line for line in lines), kind
    for line in lines:
        for model in ("gfl", "gflv2", "fcos", "retinanet"):
            stats = result["results"][model][line]
            assert stats["median"] > 0 and stats["min"] <= stats["median"] <= stats["max"]
        for ratio in ("gfl/fcos", "gfl/retinanet", "gflv2/gfl"):
            assert result["ratios"][line][ratio] > 0
    assert "| measure |" in proc.stdout and "gfl/fcos" in proc.stdout and "gflv2/gfl" in proc.stdout


def test_gpu_check_reports_what_ran_beside_what_failed():
    """A line where FCOS fails (detectron2's FCOS under fp16 autocast) still shows GFL's numbers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "tools", "gpu_check.py"))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    ok = dict(images_per_s=62.3, peak_mib=6366.6, seconds={})
    lines = [
        dict(mode="training", size="800x1333", batch=8, precision="fp16 AMP", gfl=ok,
             fcos=dict(error="RuntimeError: Index put requires the source and destination dtypes match")),
        dict(mode="training", size="800x1333", batch=8, precision="fp32", gfl=ok, fcos=dict(ok, images_per_s=51.0)),
    ]
    failed, both = gpu_check.benchmark_rows(lines)
    assert failed["ok"] and "GFL 62.3 img/s 6367 MiB" in failed["result"] and "FCOS FAILED: RuntimeError" in failed["result"]
    assert both["ok"] and "speed GFL/FCOS 1.222" in both["result"] and "V2/V1" not in both["result"]
    # with GFL V2 on the line: its time relative to V1 (62.3 / 59.0 img/s)
    (v2,) = gpu_check.benchmark_rows([dict(lines[1], gflv2=dict(ok, images_per_s=59.0, peak_mib=7003.3))])
    assert "V2/V1 time 1.056, memory 1.100" in v2["result"]
    gfl_failed = gpu_check.benchmark_rows([dict(lines[1], gfl=dict(error="RuntimeError: x"))])[0]
    assert not gfl_failed["ok"] and "GFL FAILED" in gfl_failed["result"] and "FCOS 51.0 img/s" in gfl_failed["result"]
