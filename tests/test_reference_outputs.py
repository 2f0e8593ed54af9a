"""The refactored core computes what the recorded one did: same losses (1e-6), same detections."""
import json

import pytest
import torch

from .reference_outputs import FIXTURE, VARIANTS, outputs


@pytest.fixture(scope="module")
def recorded():
    with open(FIXTURE) as f:
        return json.load(f)["variants"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_same_losses_and_detections_as_recorded(recorded, name):
    expected, actual = recorded[name], outputs(name)
    assert actual["losses"].keys() == expected["losses"].keys()
    for key, value in expected["losses"].items():
        assert actual["losses"][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert len(actual["detections"]) == len(expected["detections"])
    for got, want in zip(actual["detections"], expected["detections"]):
        assert got.keys() == want.keys()
        assert len(want["scores"]) > 0  # the record holds detections to compare
        assert got["classes"] == want["classes"]
        torch.testing.assert_close(torch.tensor(got["scores"]), torch.tensor(want["scores"]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.tensor(got["boxes"]), torch.tensor(want["boxes"]), rtol=1e-5, atol=1e-4)
        if "box_std" in want:
            torch.testing.assert_close(torch.tensor(got["box_std"]), torch.tensor(want["box_std"]), rtol=1e-5, atol=1e-4)
