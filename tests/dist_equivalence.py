"""
Run by test_engine.py as ``python -m tests.dist_equivalence OUT``: the same
two images as 1 process x 2 images and as 2 processes (gloo, CPU) x 1 image;
prints the losses as JSON.
"""

import json
import os
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from gfl_d2.testing import make_instances, shapes_image, tiny_gfl

SPECS = [
    ([[10, 12, 60, 70], [70, 20, 120, 60]], [0, 1]),
    ([[30, 30, 100, 110], [5, 80, 40, 120]], [2, 1]),
]


def batch(indices):
    return [
        {
            "image": shapes_image(*SPECS[i], seed=i),
            "instances": make_instances(*SPECS[i], (128, 128)),
        }
        for i in indices
    ]


def losses_of(indices):
    model = tiny_gfl()  # seeded: identical weights in every process
    # scores of ~0.5 rather than the 0.01 prior: the box-loss normaliser (sum of the
    # positives' scores) is then above its floor of 1 in both set-ups, where the
    # averaging over workers is exact
    with torch.no_grad():
        model.head.cls_score.bias.zero_()
    model.train()
    with EventStorage():
        return {k: v.item() for k, v in model(batch(indices)).items()}


def worker(out_path):
    gathered = comm.all_gather(losses_of([comm.get_rank()]))
    if comm.is_main_process():
        with open(out_path, "w") as f:
            json.dump(gathered, f)
    # leave together and close the process group, so that no gloo thread is torn down mid-use
    comm.synchronize()
    torch.distributed.destroy_process_group()
    # skip interpreter teardown: this torch build's gloo threads occasionally abort
    # there ("terminate called without an active exception", SIGABRT) after all
    # work is done and written, which would fail the run for no fault of the model
    os._exit(0)


if __name__ == "__main__":
    out = sys.argv[1]
    single = losses_of([0, 1])  # one process, both images
    launch(worker, 2, dist_url="auto", args=(out + ".workers",))  # two processes, one image each
    with open(out + ".workers") as f:
        workers = json.load(f)
    with open(out, "w") as f:
        json.dump({"single": single, "workers": workers}, f)
