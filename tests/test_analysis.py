"""
The bins' fit to the data (gfl_d2.bins), the edge-uncertainty study
(gfl_studies.edge_uncertainty), their tools.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from gfl_d2.bins import anchors_for_image_size, bin_fit
from gfl_d2.testing import tiny_gfl
from gfl_studies.edge_uncertainty import render, summarize_edge_uncertainty

from .repo import ROOT, run_tool


def test_visualize_distributions_tool(tmp_path):
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py"))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), PYTHONWARNINGS="ignore")
    overrides = [
        f"train.init_checkpoint={tmp_path / 'random.pth'}",
        "model.test_score_thresh=0.0",
        "dataloader.train.dataset.names.num_images=6",
        "dataloader.test.dataset.names.num_images=2",
    ]
    from gfl_d2.data import write_split

    write_split(str(tmp_path / "imgs"), "x", 1, seed=5, progress=False)
    proc = subprocess.run(
        [
            sys.executable,
            "tools/visualize_distributions.py",
            "--config-file",
            "configs/Synthetic/gfl_R_18_FPN_shapes.py",
            "--input",
            str(tmp_path / "imgs" / "x"),
            "--output",
            str(tmp_path / "vis"),
            "--confidence-threshold",
            "0",
            "--analyze-targets",
            "--max-images",
            "6",
        ]
        + overrides,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = tmp_path / "vis" / "000000_dists.png"
    assert png.is_file() and png.stat().st_size > 10_000
    hist = tmp_path / "vis" / "regression_targets.png"
    assert hist.is_file() and hist.stat().st_size > 5_000
    assert "Recommended n" in proc.stderr + proc.stdout
    summary = json.loads((tmp_path / "vis" / "regression_targets.json").read_text())
    assert summary["num_targets"] > 0 and 0 <= summary["share_beyond_reg_max"] <= 1
    assert summary["recommended_reg_max"] >= math.ceil(summary["percentiles"]["99"])


def test_uncertainty_summary_groups_edges():
    rows = np.array(
        [[0, 1.0, 0.1, 0.5], [0, 3.0, 0.3, 1.5], [1, 4.0, 0.4, 2.0], [2, 6.0, 0.5, 3.0]]
    )
    s = summarize_edge_uncertainty(rows)
    assert s["sharp, free"]["edges"] == 2 and s["sharp, free"]["mean_std_px"] == 2.0
    assert s["blurred"]["mean_relative_std"] == 0.4 and s["occluded"]["mean_abs_error_px"] == 3.0
    assert s["blurred + occluded"]["edges"] == 0
    assert abs(s["spearman_std_vs_error"] - 1.0) < 1e-9
    assert "| occluded | 1 | 6.00 |" in render(dict(summary=s))


def test_anchors_for_an_image_size_are_the_models_own():
    model = tiny_gfl()
    image = torch.zeros(3, 70, 90)
    images = model.preprocess_image([{"image": image}])  # padded to 96 x 96 (size_divisibility 32)
    features = model.backbone(images.tensor)
    expected = model.anchor_generator([features[f] for f in model.head_in_features])
    got = anchors_for_image_size(model, (70, 90))
    assert [len(a) for a in got] == [len(a) for a in expected]
    for a, b in zip(got, expected):
        assert torch.equal(a.tensor, b.tensor)


def test_bin_fit_advises_more_bins_when_targets_are_clamped_and_fewer_when_far_too_many():
    strides = np.full(1000, 8.0)
    # targets up to 20 strides with n = 16: 20% beyond the last bin
    wide = bin_fit(np.linspace(0.0, 20.0, 1000), strides, reg_max=16, bin_width=1.0)
    assert 0.19 < wide["share_clamped"] < 0.21 and wide["recommended_reg_max"] == 20
    assert "clamped" in wide["advice"]
    assert wide["advice"].endswith("use model.head.box2box_transform.reg_max=20")
    assert wide["advised_change"] == "model.head.box2box_transform.reg_max=20"
    # targets within 3 strides with n = 16: far more bins than used
    narrow = bin_fit(np.linspace(0.0, 3.0, 1000), strides, reg_max=16, bin_width=1.0)
    assert narrow["share_clamped"] == 0 and narrow["recommended_reg_max"] == 4
    assert "far inside" in narrow["advice"]
    assert "model.head.box2box_transform.reg_max=4" in narrow["advice"]
    # targets that use the range: no advice; Δ counts (bins 0.5 stride apart cover 8 strides with n
    # = 16)
    assert (
        bin_fit(np.linspace(0.0, 12.0, 1000), strides, reg_max=16, bin_width=1.0)["advice"] is None
    )
    half = bin_fit(np.linspace(0.0, 12.0, 1000), strides, reg_max=16, bin_width=0.5)
    assert half["share_clamped"] > 0.3 and "clamped" in half["advice"]
    # yacs spells the setting its own way
    assert (
        bin_fit(np.linspace(0.0, 3.0, 1000), strides, 16, 1.0, setting="MODEL.GFL.REG_MAX {n}")[
            "advice"
        ].count("MODEL.GFL.REG_MAX 4 concentrates")
        == 1
    )
    # per-level 99th percentiles
    levels = bin_fit(
        np.array([1.0, 2.0, 9.0, 10.0]), np.array([8.0, 8.0, 16.0, 16.0]), reg_max=16, bin_width=1.0
    )
    assert set(levels["p99_per_stride"]) == {8, 16} and levels["p99_per_stride"][16] > 9.9


def test_bin_advice_never_asks_to_change_n_fixed_by_a_checkpoint():
    """Fine-tuning: the checkpoint's trained box layer fixes n; another n would discard it."""
    strides = np.full(1000, 8.0)
    narrow = bin_fit(np.linspace(0.0, 3.0, 1000), strides, 16, 1.0, fixed_by="coco.pth")
    assert narrow["advice"] is None and narrow["fixed_by"] == "coco.pth"
    assert narrow["recommended_reg_max"] == 4  # still reported
    wide = bin_fit(np.linspace(0.0, 20.0, 1000), strides, 16, 1.0, fixed_by="coco.pth")
    assert "clamped" in wide["advice"] and "reg_max" not in wide["advice"]
    assert (
        "n = 16 is fixed by the trained box layer of coco.pth" in wide["advice"]
        and "input size" in wide["advice"]
    )


def test_edge_uncertainty_report_renders_again_from_its_json(tmp_path):
    """--report: the Markdown comes from the JSON alone, nothing is measured."""
    rows = np.array([[0, 1.0, 0.1, 0.5], [0, 3.0, 0.3, 1.5], [3, 4.0, 0.4, 2.0]])
    data = dict(
        setup=dict(date="2026-01-01", device="CPU", config="c.py", weights="w.pth", min_iou=0.5),
        summary=summarize_edge_uncertainty(rows),
    )
    (tmp_path / "edges.json").write_text(json.dumps(data))
    proc = run_tool(
        ["tools/edge_uncertainty.py", "--report", "--results", tmp_path, "--name", "edges"]
    )
    md = (tmp_path / "edges.md").read_text()
    assert (
        "| blurred + occluded | 1 | 4.00 | 0.400 | 2.00 |" in md
        and "| blurred | 0 | - | - | - |" in md
    )
    assert "c.py with w.pth" in md and md.strip() == proc.stdout.strip()
    missing = run_tool(
        ["tools/edge_uncertainty.py", "--report", "--results", tmp_path, "--name", "x"],
        check=False,
    )
    assert missing.returncode != 0 and f"{tmp_path / 'x.json'} not found" in missing.stderr
