"""
Batch latency of ONNX Runtime sessions compared on one machine: each
session's runs timed in blocks of consecutive runs, the sessions' blocks
alternating round by round.

Blocks, not single runs, alternate: after a run a session's intra-op threads
spin, waiting for its next run, and take the cores from another session's run
(on 2 cores, runs alternating one by one took 3x as long); a deployment runs
one session. A pause before each block lets the previous session's threads go
to sleep; the alternation of blocks lets a drift in the machine's speed weigh
on all sessions alike.
"""

import statistics
import time
from typing import Dict, List

__all__ = ["WARMUP", "BLOCK", "median_latency", "describe"]

WARMUP = 3  # untimed runs at the start of each block
BLOCK = 10  # timed runs of a block


def median_latency(sessions: Dict, feeds: Dict[str, Dict], runs: int, block: int = BLOCK) -> Dict:
    """
    Args:
        sessions: name -> ``onnxruntime.InferenceSession``.
        feeds: name -> its input feed.
        runs: timed runs per session; block: consecutive timed runs per block.

    Returns:
        name -> ``median_ms``, ``runs``, ``block``.
    """
    times: Dict[str, List[float]] = {name: [] for name in sessions}
    for _ in range(-(-runs // block)):
        for name, session in sessions.items():
            time.sleep(0.05)
            for _ in range(WARMUP):
                session.run(None, feeds[name])
            for _ in range(min(block, runs - len(times[name]))):
                start = time.perf_counter()
                session.run(None, feeds[name])
                times[name].append((time.perf_counter() - start) * 1e3)
    return {
        name: dict(median_ms=statistics.median(t), runs=len(t), block=block)
        for name, t in times.items()
    }


def describe(block=None) -> str:
    """How a report's runs were timed: ``block`` of its data (None: a report from before blocks)."""
    if block is None:
        return "after 10 warm-up runs, the graphs alternating run by run"
    return (
        f"timed in blocks of {block} consecutive runs after {WARMUP} warm-up runs, the blocks "
        "alternating (run by run, a session's spinning threads would slow the next one's run)"
    )
