"""
gfl_studies.lr_tuning: the grid with the tuning seed, the choice on validation AP, fresh seeds,
the report.
"""

import math

import pytest

from gfl_studies.lr_tuning import choose_lrs, collapsed, render, tune_then_seeds

# validation AP by (model, lr, seed): FCOS dies at the largest rate for the tuning seed and for seed
# 12
AP = {
    ("GFL", 0.01): 30.0,
    ("GFL", 0.02): 31.0,
    ("GFL", 0.04): 29.0,
    ("FCOS", 0.01): 24.0,
    ("FCOS", 0.02): 25.0,
    ("FCOS", 0.04): 0.0,
}


def fake_run(model, lr, seed):
    ap = AP[model, lr] - 0.1 * seed
    if model == "FCOS" and seed == 12:
        ap = float("nan")  # not a single detection: COCOeval's AP is NaN
    return {"AP": ap, "AP50": ap * 2 if ap == ap else ap}


def test_tune_then_fresh_seeds_at_the_best_validation_rate():
    calls, reports = [], []
    runs = tune_then_seeds(
        ["GFL", "FCOS"],
        [0.01, 0.02, 0.04],
        10,
        [11, 12, 13],
        lambda m, lr, s: calls.append((m, lr, s)) or fake_run(m, lr, s),
        jobs=2,
        on_result=lambda r: reports.append(len(r)),
    )
    tuning = {c for c in calls if c[2] == 10}
    assert tuning == {(m, lr, 10) for m in ("GFL", "FCOS") for lr in (0.01, 0.02, 0.04)}
    # every tuning run finished before the first final run started
    assert all(c[2] == 10 for c in calls[:6]) and all(c[2] != 10 for c in calls[6:])
    assert choose_lrs(runs) == {"GFL": 0.02, "FCOS": 0.02}
    finals = [r for r in runs if r["phase"] == "final"]
    assert {(r["model"], r["lr"], r["seed"]) for r in finals} == {
        (m, 0.02, s) for m in ("GFL", "FCOS") for s in (11, 12, 13)
    }
    assert reports == list(range(1, 13))  # the report after every run
    assert collapsed([r for r in finals if r["model"] == "FCOS"]) == 1  # NaN counts as collapsed
    assert collapsed([r for r in finals if r["model"] == "GFL"]) == 0

    text = render(
        dict(
            setup=dict(
                what="test.",
                lrs=[0.01, 0.02, 0.04],
                tune_seed=10,
                seeds=[11, 12, 13],
                date="d",
                device="cpu",
                torch="t",
            ),
            runs=runs,
        )
    )
    assert "(seed 10)" in text and "fresh seeds (11, 12, 13)" in text
    # the grid: AP at each rate and the chosen one (first table); the finals: lr, mean ± std,
    # collapsed
    grid = [line for line in text.splitlines() if line.startswith("| FCOS | ")]
    assert grid[0] == "| FCOS | 23.0 | 24.0 | -1.0 | 0.02 |"
    final = [c.strip() for c in grid[1].split("|")[2:-1]]
    assert final[0] == "0.02" and final[-2] == "1" and final[-1].endswith("nan, 23.7")


def test_a_rate_with_no_detection_is_never_chosen_and_ties_go_to_the_smaller_rate():
    runs = [
        dict(model="A", lr=0.01, seed=0, phase="tune", metrics={"AP": math.nan}),
        dict(model="A", lr=0.02, seed=0, phase="tune", metrics={"AP": 0.5}),
        dict(model="B", lr=0.01, seed=0, phase="tune", metrics={"AP": 3.0}),
        dict(model="B", lr=0.02, seed=0, phase="tune", metrics={"AP": 3.0}),
    ]
    assert choose_lrs(runs) == {"A": 0.02, "B": 0.01}


def test_the_tuning_seed_may_not_be_a_final_seed():
    with pytest.raises(SystemExit, match="tuning seed 11 is one of the final seeds"):
        tune_then_seeds(["GFL"], [0.01, 0.02], 11, [11, 12], fake_run)
    with pytest.raises(SystemExit, match="at least two learning rates"):
        tune_then_seeds(["GFL"], [0.01], 10, [11], fake_run)


def test_a_failed_run_stops_the_study_with_its_error():
    def failing(model, lr, seed):
        raise RuntimeError(f"{model} lr {lr}: training failed")

    with pytest.raises(SystemExit, match="training failed"):
        tune_then_seeds(["GFL"], [0.01, 0.02], 10, [11], failing)
