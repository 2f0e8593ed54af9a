import math
import os
import warnings

import torch

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*pkg_resources.*")
warnings.filterwarnings("ignore", message=".*meshgrid.*")

# the most memory one worker's tests take at once (a teacher and a student R-101 built side by side)
_GIB_PER_WORKER = 3


def _usable_cpus() -> int:
    """
    The CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (containers).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def pytest_xdist_auto_num_workers(config):
    """
    ``-n auto``: one worker per usable CPU, as many as the memory holds
    ($PYTEST_XDIST_AUTO_NUM_WORKERS wins).
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own hook reads it
    workers = _usable_cpus()
    try:
        gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        workers = min(workers, max(1, int(gib // _GIB_PER_WORKER)))
    except (AttributeError, ValueError, OSError):
        pass
    return workers


def _share_the_cores():
    """
    Under pytest-xdist (``-n``), give each worker its share of the cores: torch
    would otherwise start one thread per core in every worker, and the tools the
    tests run inherit ``OMP_NUM_THREADS``.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, _usable_cpus() // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)


_share_the_cores()
