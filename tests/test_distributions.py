"""Per-edge distributions and uncertainty in the inference outputs (pred_box_dists, pred_box_std)."""
import importlib.util
import math
import os
import subprocess
import sys

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes

from gfl_d2.modeling.box_coding import distribution_mean_std
from helpers import shapes_image, tiny_gfl
from test_box_coding import two_bin_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_decoded_distributions_std_and_boxes():
    model = tiny_gfl()
    stride = 16.0
    centers = torch.tensor([[32.0, 32.0], [64.0, 48.0], [96.0, 96.0]])
    anchors = Boxes(torch.cat([centers - 4 * stride, centers + 4 * stride], 1))
    scores = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 0.7]])
    # edge targets in bins; 2.0 and 5.0 are exact bins (one-hot), the others split over two bins
    targets = torch.tensor([[2.0, 5.0, 1.25, 3.5], [0.5, 2.0, 2.75, 1.0], [4.0, 4.0, 4.0, 4.0]])
    deltas = two_bin_logits(targets, model.box2box_transform.reg_max + 1).reshape(3, -1)
    inst = model._decode_per_level_predictions(anchors, scores, deltas, 0.05, 1000, (128, 128))
    order = inst.scores.argsort(descending=True)
    inst = inst[order]
    dists = inst.pred_box_dists
    assert dists.shape == (3, 4, model.box2box_transform.reg_max + 1)
    torch.testing.assert_close(dists.sum(-1), torch.ones(3, 4))
    # the expectation of the distributions reproduces the box
    mean, _ = distribution_mean_std(dists)
    torch.testing.assert_close(mean, targets)
    expected = torch.cat([centers - targets[:, :2] * stride, centers + targets[:, 2:] * stride], 1)
    torch.testing.assert_close(inst.pred_boxes.tensor, expected)
    # std: 0 for a one-hot edge, sqrt(p (1 - p)) bins for a two-bin one, times the stride
    frac = targets - targets.floor()
    torch.testing.assert_close(inst.pred_box_std, (frac * (1 - frac)).sqrt() * stride, atol=1e-4, rtol=0)
    assert inst.pred_box_std[0, 0] == 0 and inst.pred_box_std[2].abs().max() == 0
    torch.testing.assert_close(inst.pred_box_std[0, 2], torch.tensor(math.sqrt(0.25 * 0.75) * stride))


def run_model(model, image, **size):
    with torch.no_grad():
        (out,) = model([dict(image=image, **size)])
    return out["instances"]


def test_outputs_are_consistent_and_scale_with_resize():
    model = tiny_gfl()
    model.eval()
    model.test_score_thresh = 0.0
    # an untrained head predicts flat distributions (boxes of +-8 strides, all clipped);
    # concentrate them on bins 1-2 so that many boxes stay inside the image
    with torch.no_grad():
        bias = model.head.bbox_pred.bias.view(4, -1)
        bias[:, 1], bias[:, 2] = 4.0, 3.0
    image = shapes_image([[10, 10, 60, 70]], [1], size=(96, 128))
    base = run_model(model, image)
    assert len(base) > 0
    dists, std = base.pred_box_dists, base.pred_box_std
    torch.testing.assert_close(dists.sum(-1), torch.ones_like(std))
    mean, std_bins = distribution_mean_std(dists)
    # boxes strictly inside the image were not clipped: width = (l + r) * stride
    b = base.pred_boxes.tensor
    inside = (b[:, 0] > 0) & (b[:, 1] > 0) & (b[:, 2] < 128) & (b[:, 3] < 96)
    assert inside.any()
    stride_x = (b[:, 2] - b[:, 0]) / (mean[:, 0] + mean[:, 2])
    stride_y = (b[:, 3] - b[:, 1]) / (mean[:, 1] + mean[:, 3])
    torch.testing.assert_close(stride_x[inside], stride_y[inside], rtol=1e-4, atol=1e-3)
    for s in stride_x[inside].tolist():
        assert min(abs(s - k) for k in (8, 16, 32, 64, 128)) < 1e-2 * s
    torch.testing.assert_close(std[inside], std_bins[inside] * stride_x[inside, None], rtol=1e-4, atol=1e-4)

    # asking for a 2x wide, 3x high output scales x-edges by 2 and y-edges by 3
    scaled = run_model(model, image, height=288, width=256)
    torch.testing.assert_close(scaled.pred_box_dists, dists)
    torch.testing.assert_close(scaled.pred_box_std, std * torch.tensor([2.0, 3.0, 2.0, 3.0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled.pred_boxes.tensor, b * torch.tensor([2.0, 3.0, 2.0, 3.0]), rtol=1e-5, atol=1e-3)


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
        [sys.executable, "tools/visualize_distributions.py", "--input", str(tmp_path / "imgs" / "x"),
         "--output", str(tmp_path / "vis"), "--confidence-threshold", "0", "--analyze-targets",
         "--max-images", "6"] + overrides,
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = tmp_path / "vis" / "000000_dists.png"
    assert png.is_file() and png.stat().st_size > 10_000
    hist = tmp_path / "vis" / "regression_targets.png"
    assert hist.is_file() and hist.stat().st_size > 5_000
    assert "Recommended n" in proc.stderr + proc.stdout
    import json

    summary = json.loads((tmp_path / "vis" / "regression_targets.json").read_text())
    assert summary["num_targets"] > 0 and 0 <= summary["share_beyond_reg_max"] <= 1
    assert summary["recommended_reg_max"] >= math.ceil(summary["percentiles"]["99"])


def test_uncertainty_summary_groups_edges():
    spec = importlib.util.spec_from_file_location("measure", os.path.join(ROOT, "tools", "measure_edge_uncertainty.py"))
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    import numpy as np

    rows = np.array([[0, 1.0, 0.1, 0.5], [0, 3.0, 0.3, 1.5], [1, 4.0, 0.4, 2.0], [2, 6.0, 0.5, 3.0]])
    s = measure.summarize(rows)
    assert s["sharp, free"]["edges"] == 2 and s["sharp, free"]["mean_std_px"] == 2.0
    assert s["blurred"]["mean_relative_std"] == 0.4 and s["occluded"]["mean_abs_error_px"] == 3.0
    assert s["blurred + occluded"]["edges"] == 0
    assert abs(s["spearman_std_vs_error"] - 1.0) < 1e-9
    assert "| occluded | 1 | 6.00 |" in measure.to_markdown(s)
