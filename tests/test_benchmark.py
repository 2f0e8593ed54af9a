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
    assert set(result["results"]) == {"gfl", "fcos", "retinanet"}
    lines = set(result["results"]["gfl"])
    for kind in ("infer", "train", "assign", "peak memory"):
        assert any(kind in line for line in lines), kind
    for line in lines:
        for model in ("gfl", "fcos", "retinanet"):
            stats = result["results"][model][line]
            assert stats["median"] > 0 and stats["min"] <= stats["median"] <= stats["max"]
        assert result["ratios"][line]["gfl/fcos"] > 0 and result["ratios"][line]["gfl/retinanet"] > 0
    assert "| measure |" in proc.stdout and "GFL/fcos" in proc.stdout
