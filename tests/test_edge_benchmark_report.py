"""
The edge benchmark's verdicts with repeated timings (tools/edge_benchmark.py --repeats):
a target is met or missed only where every repeat agrees.
"""

from gfl_studies import edge_benchmark
from gfl_studies.edge_benchmark import GFL_D2, NANODET


def _data(ours, theirs, int8):
    """A one-size report whose graphs took these repeats' milliseconds."""
    times = {NANODET: theirs, GFL_D2: ours, f"{GFL_D2}, INT8": int8}
    timing = {
        name: dict(median_ms=sorted(ms)[len(ms) // 2], repeats_ms=ms, runs=100, block=10)
        for name, ms in times.items()
    }
    return dict(
        threads=2, runs=100, repeats=len(ours), quantisation="q",
        sizes=[dict(size=320, max_diff=0.0, timing=timing)],
        machine=dict(device="CPU", date="2026-12-05"), onnxruntime="1",
    )  # fmt: skip


def _targets(data):
    return edge_benchmark.render(data).split("Targets:\n")[1].strip()


def test_every_repeat_faster_meets_the_target():
    text = _targets(_data([9.0, 9.5, 9.2], [10.0, 10.0, 10.0], [5.0, 6.0, 6.0]))
    assert "latency: met (0.92x; repeats 0.90x to 0.95x)" in text, text
    assert "INT8 at least 1.5x faster than fp32: met (1.58x; repeats 1.53x to 1.80x)" in text


def test_a_drift_between_repeats_cancels_in_the_ratios():
    # the second repeat ran at half speed throughout: its ratios are those of the others
    data = _data([9.0, 18.0, 9.6], [10.0, 20.0, 10.0], [6.0, 12.0, 6.0])
    text = _targets(data)
    assert "latency: met (0.90x; repeats 0.90x to 0.96x)" in text, text
    assert f"| 320 | {GFL_D2} | 9.60 | 0.90 (0.90-0.96) |  |" in edge_benchmark.render(data)


def test_repeats_on_both_sides_of_the_target_decide_nothing():
    text = _targets(_data([9.0, 10.5, 9.2], [10.0, 10.0, 10.0], [8.0, 8.0, 8.0]))
    assert "latency: within the spread of the repeats (0.92x; repeats 0.90x to 1.05x)" in text
    assert "than fp32: missed (1.15x; repeats 1.12x to 1.31x)" in text


def test_every_repeat_slower_misses_the_target():
    text = _targets(_data([11.0, 10.5, 10.2], [10.0, 10.0, 10.0], [8.0, 8.0, 8.0]))
    assert "latency: missed (1.05x; repeats 1.02x to 1.10x)" in text


def test_the_table_shows_each_ratios_range():
    table = edge_benchmark.render(_data([9.0, 10.5, 9.2], [10.0, 10.0, 10.0], [8.0, 8.0, 8.0]))
    assert f"| 320 | {GFL_D2} | 9.20 | 0.92 (0.90-1.05) |  |" in table
    assert f"| 320 | {GFL_D2}, INT8 | 8.00 | 0.80 (0.80-0.80) | 1.15x (1.12-1.31x) |" in table
