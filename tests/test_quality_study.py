"""
The quality-correlation study: Spearman's rank correlation, the candidates, the IoUs, the
command line.
"""

import json

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from gfl_studies.correlation import spearman
from gfl_studies.quality_study import detection_candidates, held_quality, true_ious

from .repo import run_tool


def test_spearman_against_hand_computed_values():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)  # any increasing function
    assert spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4) -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3])) and np.isnan(spearman([1, 2], [2, 1]))
    with pytest.raises(ValueError, match="3 and 2 values"):
        spearman([1, 2, 3], [1, 2])


def test_candidates_of_a_detection():
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(
        torch.tensor([[10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 50.0, 50.0]])
    )  # 10 x 20, 50 x 50
    inst.scores = torch.tensor([0.2, 0.6])
    inst.pred_classes = torch.tensor([1, 0])
    inst.pred_quality = torch.tensor([0.5, 0.75])
    inst.pred_box_std = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    dists = torch.zeros(2, 4, 17)
    dists[0, :, 3] = 1.0  # sharp
    dists[1] = 1.0 / 17  # flat
    inst.pred_box_dists = dists
    c = detection_candidates(inst)
    np.testing.assert_allclose(c["cls"], [0.4, 0.8], rtol=1e-6)
    # std over the side each edge moves: l, r along the width (10), t, b along the height (20)
    np.testing.assert_allclose(c["-std/size"], [-(0.1 + 0.1 + 0.3 + 0.2) / 4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(c["top-1"], [1.0, 1 / 17], rtol=1e-6)
    np.testing.assert_allclose(c["top-4"], [1.0, 4 / 17], rtol=1e-6)
    # the IoU is with the best box of the predicted class only
    gt_boxes, gt_classes = (
        torch.tensor([[10.0, 10.0, 20.0, 30.0], [0.0, 0.0, 50.0, 25.0]]),
        torch.tensor([0, 0]),
    )
    np.testing.assert_allclose(true_ious(inst, gt_boxes, gt_classes), [0.0, 0.5], rtol=1e-6)
    inst.pred_classes = torch.tensor([0, 0])
    np.testing.assert_allclose(true_ious(inst, gt_boxes, gt_classes), [1.0, 0.5], rtol=1e-6)


def test_tool_writes_the_report_and_the_picture(tmp_path):
    out = tmp_path / "out"
    opts = ["dataloader.test.dataset.names.num_images=3", "model.test_score_thresh=0.0"]
    proc = run_tool(
        [
            "tools/quality_study.py",
            "--model",
            "GFL",
            "configs/Synthetic/gfl_R_18_FPN_shapes.py",
            "",
            "--model",
            "GFL V2",
            "configs/Synthetic/gflv2_R_18_FPN_shapes.py",
            "",
            "--output",
            out,
            "--opts",
            *opts,
            "--results",
            tmp_path,
            "--name",
            "quality",
        ],
        datasets=tmp_path / "datasets",
    )
    md = (tmp_path / "quality.md").read_text()
    table = [r for r in md.split("\n\n")[1].splitlines() if r.startswith("| ")]  # the correlations
    assert [r.split("|")[1].strip() for r in table[1:]] == [
        "GFL (all)",
        "GFL (IoU > 0)",
        "GFL V2 (all)",
        "GFL V2 (IoU > 0)",
    ]
    detections = json.loads((out / "detections.json").read_text())
    v1_all = [cell.strip() for cell in table[1].split("|")[1:-1]]
    assert (
        int(v1_all[1]) == len(detections["GFL"]["iou"]) > 0 and v1_all[3] == "–"
    )  # V1 has no separate quality
    n = len(detections["GFL V2"]["iou"])
    assert len(detections["GFL V2"]["quality"]) == n > 0 and "quality" not in detections["GFL"]
    report = json.loads((tmp_path / "quality.json").read_text())
    assert (
        report["correlations"]["GFL V2"]["all"]["detections"] == n
        and report["setup"]["images"] == 3
    )
    assert report["correlations"]["GFL"]["all"]["quality"] is None
    assert (out / "quality_vs_iou.png").stat().st_size > 10000
    # COCO AP per model; V2 again with its quality held at the mean of its detections' quality
    assert set(report["ap"]["GFL"]) == {"AP", "AP50", "AP75"}
    held = report["ap"]["GFL V2"]["held"]
    assert held["quality"] == pytest.approx(np.mean(detections["GFL V2"]["quality"]), rel=1e-6)
    assert all(isinstance(held[k], float) for k in ("AP", "AP50", "AP75"))
    assert f"GFL V2, quality held at {held['quality']:.3f}: AP" in proc.stdout
    assert "| model | AP | AP50 | AP75 | q̄ | AP, quality held at q̄ |" in md
    assert f"| GFL V2 | {report['ap']['GFL V2']['AP']:.1f} |" in md
    assert f"GFL V2: {n} detections on 3 images" in proc.stdout
    # --report: the same Markdown from the JSON alone
    (tmp_path / "quality.md").unlink()
    run_tool(["tools/quality_study.py", "--report", "--results", tmp_path, "--name", "quality"])
    assert (tmp_path / "quality.md").read_text() == md
    # a missing checkpoint is named before anything runs
    proc = run_tool(
        [
            "tools/quality_study.py",
            "--model",
            "X",
            "configs/Synthetic/gfl_R_18_FPN_shapes.py",
            tmp_path / "missing.pth",
            "--output",
            tmp_path / "o2",
            "--results",
            tmp_path / "o2",
        ],
        check=False,
    )
    assert (
        proc.returncode != 0
        and f"error: model 'X': checkpoint {tmp_path / 'missing.pth'} not found" in proc.stderr
    )
    assert not (tmp_path / "o2").exists()


def test_held_quality_ranks_by_the_classification_score_and_is_undone():
    from detectron2.config import instantiate

    from gfl_d2.lazy_config import load_lazy_config

    def detect(model):
        torch.manual_seed(1)
        with torch.no_grad():
            return model([{"image": torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)}])[0][
                "instances"
            ]

    cfg = load_lazy_config(
        "configs/Synthetic/gflv2_R_18_FPN_shapes.py", ["model.test_score_thresh=0.0"]
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():  # a predictor whose output varies from location to location
        for conv in model.head.dgqp.layers[::2]:
            conv.weight.normal_(0, 1.0)
    before = detect(model)
    assert before.pred_quality.std() > 0.01
    with held_quality(model, 0.3):
        held = detect(model)
    torch.testing.assert_close(held.pred_quality, torch.full_like(held.pred_quality, 0.3))
    cls = held.scores / 0.3  # the ranking is the classification score's
    assert torch.all(cls[:-1] >= cls[1:]) and cls.max() <= 1.0
    torch.testing.assert_close(detect(model).pred_quality, before.pred_quality)  # the hook is gone
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\), got 1.0"):
        with held_quality(model, 1.0):
            pass
    v1 = instantiate(load_lazy_config("configs/Synthetic/gfl_R_18_FPN_shapes.py").model)
    with pytest.raises(ValueError, match="GFL has no distribution-guided quality predictor"):
        with held_quality(v1, 0.5):
            pass
