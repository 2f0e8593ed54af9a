import os
import warnings

import torch

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*pkg_resources.*")
warnings.filterwarnings("ignore", message=".*meshgrid.*")


def _share_the_cores():
    """
    Under pytest-xdist (``-n``), give each worker its share of the cores: torch
    would otherwise start one thread per core in every worker, and the tools the
    tests run inherit ``OMP_NUM_THREADS``.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)


_share_the_cores()
