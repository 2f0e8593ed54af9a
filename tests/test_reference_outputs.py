"""
The behaviour lock: the code computes the losses and detections recorded in
``fixtures/reference_outputs.json``, within float32 noise across CPUs
(``reference_outputs.tolerance``), and a real change of behaviour breaks it.
"""

import json

import pytest
import torch

from .reference_outputs import FIXTURE, TOP_DETECTIONS, VARIANTS, compare, outputs, tolerance

# detections beyond the record's, so that one swapped across the last place still matches
SPARE = 10


@pytest.fixture(scope="module")
def recorded():
    with open(FIXTURE) as f:
        return json.load(f)["variants"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_same_losses_and_detections_as_recorded(recorded, name):
    assert all(len(d["scores"]) == TOP_DETECTIONS for d in recorded[name]["detections"])
    assert compare(outputs(name, top=TOP_DETECTIONS + SPARE), recorded[name]) == []


@pytest.mark.parametrize("name", ["GFL", "RetinaNet+QFL"])
def test_lock_holds_with_another_convolution_kernel_and_thread_split(recorded, name):
    """
    Another CPU, simulated: PyTorch's reference convolutions instead of oneDNN's,
    on one thread. They differ from the default in the last bits (RetinaNet's
    exponential box decoding amplifies that most: up to about 8e-4 px measured),
    and the lock holds.
    """
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.backends.mkldnn.flags(enabled=False):
            other = outputs(name, top=TOP_DETECTIONS + SPARE)
    finally:
        torch.set_num_threads(threads)
    default = outputs(name)
    moved = max(
        abs(a - b)
        for g, w in zip(other["detections"], default["detections"])
        for ga, wa in zip(g["boxes"], w["boxes"])
        for a, b in zip(ga, wa)
    )
    assert moved > 0  # the arithmetic did change
    assert compare(other, recorded[name]) == []


@pytest.mark.parametrize(
    "change, what",
    [
        (
            ["model.head.box2box_transform.bin_width=1.001"],
            "boxes",
        ),  # every distance 0.1% longer: boxes move by up to a few 0.01 px
        (["model.qfl_beta=2.01"], "loss_qfl"),  # QFL's exponent by 0.5%
        (["model.loss_dfl_weight=0.2501"], "loss_dfl"),  # a weight in its fourth digit
    ],
)
def test_lock_catches_a_small_real_change(recorded, change, what):
    problems = compare(outputs("GFL", change, top=TOP_DETECTIONS + SPARE), recorded["GFL"])
    assert problems, f"{change} went unnoticed"
    prefix = "image" if what == "boxes" else what
    assert any(p.startswith(prefix) for p in problems), problems


def test_tolerance_is_far_below_a_pixel_and_far_above_float32_roundoff():
    assert 1e-3 < tolerance(128.0) < 0.05
    assert 1e-5 < tolerance(1.0) < 1e-3
