"""
gfl_studies.fcos_collapse: detectron2's FCOS trained unchanged, recording what the decoding's
ReLU clamps.
"""

import json
import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from gfl_d2.lazy_config import load_lazy_config
from gfl_d2.testing import two_image_batch
from gfl_studies.fcos_collapse import read_series, render, summarize_run

from .repo import ROOT

FCOS_CONFIG = os.path.join(ROOT, "configs/Synthetic/fcos_R_18_FPN_shapes.py")


def fcos_pair():
    cfg = load_lazy_config(
        FCOS_CONFIG, ["model._target_=gfl_studies.fcos_collapse.ClampRecordingFCOS"]
    ).model
    torch.manual_seed(0)
    recording = instantiate(cfg)
    torch.manual_seed(0)
    plain = instantiate(load_lazy_config(FCOS_CONFIG).model)
    return recording.train(), plain.train()


@pytest.mark.parametrize("bias, all_four", [(-10.0, 1.0), (10.0, 0.0)])
def test_records_the_positives_whose_four_distances_are_clamped(bias, all_four):
    recording, plain = fcos_pair()
    for model in (recording, plain):
        with torch.no_grad():
            model.head.bbox_pred.bias.fill_(bias)
    data = two_image_batch()
    with EventStorage() as storage:
        losses = recording(data)
    with EventStorage():
        expected = plain(data)
    # the same losses as detectron2's FCOS: the subclass only records
    assert set(losses) == set(expected)
    for key in losses:
        torch.testing.assert_close(losses[key], expected[key])
    history = storage.histories()
    assert history["clamp/all_four"].latest() == all_four
    assert history["clamp/any"].latest() == all_four
    assert 0.0 <= history["tower/zero"].latest() <= 1.0
    # a positive decoded to a point has GIoU loss ~1: the clamped run's box loss is at its ceiling
    if all_four == 1.0:
        assert losses["loss_fcos_loc"].item() > 0.99 * expected["loss_fcos_loc"].item()
        losses["loss_fcos_loc"].backward()
        assert (
            recording.head.bbox_pred.weight.grad is None
            or recording.head.bbox_pred.weight.grad.abs().max() == 0
        )


def test_series_and_report(tmp_path):
    rows = [
        {
            "iteration": 19,
            "loss_fcos_loc": 0.9,
            "loss_fcos_ctr": 0.69,
            "loss_fcos_cls": 0.5,
            "clamp/all_four": 0.4,
            "clamp/any": 0.9,
            "tower/zero": 0.6,
        },
        {
            "iteration": 39,
            "loss_fcos_loc": 1.0,
            "clamp/all_four": 1.0,
            "clamp/any": 1.0,
            "tower/zero": 1.0,
        },
        {"bbox/AP": 0.0},
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
    series = read_series(str(tmp_path))
    assert [r["iteration"] for r in series] == [20, 40]
    run = summarize_run({"seed": 7, "metrics": {"AP": float("nan")}, "lr": 0.02}, series)
    assert run["collapsed"]  # no detection at all
    text = render(
        {"setup": {"settings": "s", "date": "d", "device": "cpu", "torch": "t"}, "runs": [run]}
    )
    assert "### seed 7, lr 0.02: AP nan (collapsed)" in text
    assert "| 40 | 1.000 | – | – | 1.000 | 1.000 | 1.000 |" in text

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.json").write_text(json.dumps({"bbox/AP": 1.0}))
    with pytest.raises(RuntimeError, match="no logged training scalars"):
        read_series(str(tmp_path / "empty"))


def test_settings_are_documented_overrides_and_the_report_compares_them():
    from gfl_d2.lazy_config import load_lazy_config
    from gfl_studies.fcos_collapse import SETTINGS

    for label, overrides in SETTINGS.items():  # each is a valid override of the study's config
        cfg = load_lazy_config(FCOS_CONFIG, overrides)
        for o in overrides:
            key, value = o.split("=", 1)
            node = cfg
            for part in key.split(".")[:-1]:
                node = node[part]
            assert str(node[key.split(".")[-1]]) == value, (label, o)
    series = [
        {"iteration": i, "clamp/all_four": f, "loss_fcos_loc": 1.0}
        for i, f in ((20, 0.5), (40, 0.9), (100, 0.95))
    ]
    runs = [
        summarize_run(
            {"seed": 7, "metrics": {"AP": float("nan")}},
            series,
            setting="warm-up 25% of the schedule",
        ),
        summarize_run(
            {"seed": 7, "metrics": {"AP": 22.5}, "lr": 0.01},
            [dict(r, **{"clamp/all_four": 0.0}) for r in series],
            setting="lr 0.01",
        ),
    ]
    text = render(
        {"setup": {"settings": "s", "date": "d", "device": "cpu", "torch": "t"}, "runs": runs}
    )
    assert (
        "| warm-up 25% of the schedule | 7 | 0.500 | 0.900 | 0.950 | 0.950 | 1.000 | nan | yes |"
        in text
    )
    assert "| lr 0.01 | 7 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 | 22.5 | no |" in text
    assert "### lr 0.01, seed 7: AP 22.5 (learned)" in text
