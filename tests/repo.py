"""
The repository the tests run from: its root (tools/, configs/), the overrides
that shrink the embedded config to seconds, and running a tool as a user does.
"""

import json
import os
import subprocess
import sys

__all__ = ["ROOT", "TINY_OVERRIDES", "run_tool", "read_metrics"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# overrides that shrink the embedded config to a few seconds (tools/train_net.py tests)
TINY_OVERRIDES = [
    "dataloader.train.dataset.names.num_images=16",
    "dataloader.test.dataset.names.num_images=8",
    "dataloader.train.total_batch_size=4",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]


def run_tool(args, datasets=None, timeout=600, check=True):
    """``python <args>`` from the repository root, as a user runs a tool; the finished process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if datasets is not None:
        env["DETECTRON2_DATASETS"] = str(datasets)
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc


def read_metrics(path):
    """The records of a detectron2 ``metrics.json``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
