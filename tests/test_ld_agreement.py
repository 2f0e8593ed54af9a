"""
The LD agreement study: the per-positive values against their formulas, the refusals, the
command line.
"""

import json
import math

import numpy as np
import pytest
import torch

from gfl_studies.ld_agreement import agreement

from .repo import run_tool

# gfl-d2's LD loss is float32: each term's log-softmax rounding (|log p| < 10, a couple of ulps)
# times T^2 = 100
LD_LOSS_ATOL = 100 * 2 * 2**-23 * 10


def _outputs(logits, edges, targets, index=None):
    p = len(logits)
    return dict(
        logits=torch.tensor(logits, dtype=torch.float32),
        edges=torch.tensor(edges, dtype=torch.float32),
        targets=torch.tensor(targets, dtype=torch.float32),
        iou=torch.linspace(0.5, 0.9, p),
        index=torch.tensor(index if index is not None else [[0, i] for i in range(p)]),
    )


def test_values_against_their_formulas():
    rng = np.random.default_rng(0)
    targets = [[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]]
    teacher = _outputs(
        rng.normal(size=(2, 4, 5)), [[1.0, 2.5, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0]], targets
    )
    student = _outputs(
        rng.normal(size=(2, 4, 5)), [[1.5, 2.0, 3.0, 4.5], [2.0, 2.0, 2.0, 2.0]], targets
    )
    v = agreement(student, teacher, temperature=10.0)
    p = np.exp(teacher["logits"].double().numpy())
    p /= p.sum(-1, keepdims=True)
    q = np.exp(student["logits"].double().numpy())
    q /= q.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        v["KL to teacher"].numpy(), (p * np.log(p / q)).sum(-1).mean(-1), rtol=1e-12
    )
    pt = np.exp(teacher["logits"].double().numpy() / 10)
    pt /= pt.sum(-1, keepdims=True)
    qt = np.exp(student["logits"].double().numpy() / 10)
    qt /= qt.sum(-1, keepdims=True)
    # values of about 0.15: a wrong T, or a sum for the mean, is far outside the float32 bound
    np.testing.assert_allclose(
        v["LD loss"].numpy(),
        100 * (pt * np.log(pt / qt)).mean(-1).mean(-1),
        rtol=0,
        atol=LD_LOSS_ATOL,
    )
    np.testing.assert_allclose(v["edge error"].numpy(), [(0.5 + 0 + 0 + 0.5) / 4, 0.0])
    # positive 0: |teacher - gt| = (0, 0.5, 0, 1), |student - gt| = (0.5, 0, 0, 0.5), per edge the
    # teacher is
    # closer, farther, tied, farther; positive 1: all four tied
    np.testing.assert_allclose(v["teacher closer"].numpy(), [(1 + 0 + 0.5 + 0) / 4, 0.5])
    np.testing.assert_allclose(v["iou"].numpy(), student["iou"].numpy())
    same = agreement(teacher, teacher, temperature=10.0)
    assert same["KL to teacher"].max() == 0  # float64
    assert same["LD loss"].max() < LD_LOSS_ATOL
    np.testing.assert_allclose(same["teacher closer"].numpy(), [0.5, 0.5])


def test_refuses_different_positives_or_bins():
    a = _outputs(np.zeros((2, 4, 5)), np.zeros((2, 4)), np.zeros((2, 4)))
    b = _outputs(np.zeros((2, 4, 5)), np.zeros((2, 4)), np.zeros((2, 4)), index=[[0, 0], [0, 7]])
    with pytest.raises(ValueError, match="different positives"):
        agreement(a, b, 10.0)
    c = _outputs(np.zeros((2, 4, 9)), np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4, 9\).*\(2, 4, 5\).*same n"):
        agreement(c, a, 10.0)


def test_tool_writes_the_report(tmp_path):
    opts = ["dataloader.test.dataset.names.num_images=3"]
    proc = run_tool(
        [
            "tools/ld_agreement.py",
            "--teacher",
            "configs/Synthetic/gfl_R_18_FPN_shapes.py",
            "",
            "--model",
            "Student",
            "configs/Synthetic/Distillation/gfl_R_18_half_FPN_shapes.py",
            "",
            "--model",
            "Student + LD",
            "configs/Synthetic/Distillation/gfl_R_18_half_FPN_shapes_ld.py",
            "",
            "--opts",
            *opts,
            "--results",
            tmp_path,
            "--name",
            "lda",
        ],
        datasets=tmp_path / "datasets",
    )
    report = json.loads((tmp_path / "lda.json").read_text())
    table = report["table"]
    assert list(table) == ["teacher", "Student", "Student + LD"] and report["setup"]["images"] == 3
    positives = {row["positives"] for row in table.values()}
    assert len(positives) == 1 and positives.pop() > 0  # the same positives for every model
    assert table["teacher"]["KL to teacher"] == 0 and table["teacher"]["teacher closer"] == 0.5
    # untrained models, each with its own random init, differ from the teacher
    assert all(
        table[n]["KL to teacher"] > 0 and math.isfinite(table[n]["LD loss"])
        for n in ("Student", "Student + LD")
    )
    md = (tmp_path / "lda.md").read_text()
    assert (
        f"| Student + LD | {table['Student + LD']['positives']} | "
        f"{table['Student + LD']['iou']:.4f} |" in md
    )
    assert md in proc.stdout
    # a student named like the teacher's row is refused
    bad = run_tool(
        ["tools/ld_agreement.py", "--teacher", "a.py", "", "--model", "teacher", "b.py", ""],
        check=False,
    )
    assert bad.returncode == 2 and "'teacher' names the teacher's row" in bad.stderr
