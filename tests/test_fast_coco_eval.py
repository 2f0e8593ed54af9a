"""
COCO evaluation's fast path (``gfl_d2.evaluation.fast_cocoeval``; here, without
detectron2's compiled ops, faster-coco-eval's ``COCOeval``) against pycocotools'
``COCOeval`` on synthetic detections made to hit COCO's corner cases: crowd
ground truth, the three object sizes, images without ground truth, detections
without ground truth, a category never annotated and one never detected, tied
scores, and images with fewer, exactly and more than 100 detections. The 12
summary numbers, the whole precision array and detectron2's per-class AP table
agree; and the evaluators gfl-d2's entry points build run the fast path.

Float arithmetic: pycocotools computes precision as ``tp / (tp + fp + eps)``
(eps = 2**-52). Its eps changes the quotient only when ``tp + fp == 1`` (for
``tp + fp >= 2`` the sum rounds back), where it gives ``1 - 2**-52``;
faster-coco-eval gives 1 there. Every other element of the precision array is
bit-equal; means over them (the summary, per-class AP) agree to a few ulps.
"""

import contextlib
import io
import json
import logging
import sys

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, coco_evaluation
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gfl_d2 import evaluation
from gfl_d2.evaluation import COCOEvaluatorWithCurves, fast_cocoeval, use_fast_cocoeval

from .repo import ROOT, run_tool

CATEGORY_IDS = [1, 3, 4, 7, 8, 11]  # not contiguous; 8 never annotated, 11 never detected
NEVER_ANNOTATED, NEVER_DETECTED = 8, 11
WIDTH, HEIGHT = 640, 480
# float64 means of values that differ by at most 2**-52 (see above): a few ulps
RTOL = 1e-14


def _detectron2_compiled() -> bool:
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def _box(rng, side):
    """An XYWH box inside the image whose sqrt(area) is about ``side``."""
    aspect = rng.uniform(0.5, 2.0)
    w = min(side * np.sqrt(aspect), WIDTH - 2)
    h = min(side / np.sqrt(aspect), HEIGHT - 2)
    return [rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h]


def _jittered(rng, box, scale):
    x, y, w, h = box
    dx, dy, dw, dh = rng.normal(0, scale, 4)
    return [x + dx * w, y + dy * h, max(w * (1 + dw), 1.0), max(h * (1 + dh), 1.0)]


def synthetic_coco(seed=0, num_images=300):
    """A ground-truth COCO dict and detections (COCO results) with the corner cases above."""
    rng = np.random.default_rng(seed)
    annotated = [c for c in CATEGORY_IDS if c != NEVER_ANNOTATED]
    detected = [c for c in CATEGORY_IDS if c != NEVER_DETECTED]
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        first = len(detections)
        images.append(dict(id=image_id, width=WIDTH, height=HEIGHT, file_name=f"{image_id}.jpg"))
        # a fifth of the images without ground truth
        num_gt = 0 if image_id % 5 == 0 else int(rng.integers(1, 15))
        for _ in range(num_gt):
            side = rng.choice([rng.uniform(4, 32), rng.uniform(32, 96), rng.uniform(96, 400)])
            box, category = _box(rng, side), int(rng.choice(annotated))
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=category,
                    bbox=box,
                    area=box[2] * box[3] * rng.uniform(0.5, 1.0),  # a mask's area, as COCO's
                    iscrowd=int(rng.random() < 0.05),
                )
            )
            for _ in range(int(rng.integers(0, 4))):  # hits, near misses, wrong classes
                c = category if rng.random() < 0.8 else int(rng.choice(detected))
                jitter = rng.choice([0.05, 0.3])
                score = rng.uniform(0.2, 1.0) if jitter < 0.1 else rng.uniform(0.0, 0.9)
                if c != NEVER_DETECTED:
                    detections.append((image_id, c, _jittered(rng, box, jitter), score))
        # detections without ground truth: on some images exactly maxDets (100) in all, on some
        # more
        extra = [0, 3, 10, 100, 160][image_id % 5]
        if image_id % 7 == 0:
            extra = max(100 - (len(detections) - first), 0)
        for _ in range(extra):
            c, box = int(rng.choice(detected)), _box(rng, rng.uniform(4, 300))
            detections.append((image_id, c, box, rng.uniform(0.0, 0.9)))
    # half the scores on a coarse grid: many ties
    coarse = rng.random(len(detections)) < 0.5
    results = [
        dict(
            image_id=i,
            category_id=c,
            bbox=[float(v) for v in b],
            score=float(round(s, 2) if r else s),
        )
        for (i, c, b, s), r in zip(detections, coarse)
    ]
    categories = [dict(id=c, name=f"class_{c}") for c in CATEGORY_IDS]
    return dict(images=images, annotations=annotations, categories=categories), results


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_coco()


def _coco(dataset):
    coco = COCO()
    coco.dataset = json.loads(json.dumps(dataset))  # each evaluation on its own copy
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluate(cocoeval_class, synthetic):
    dataset, results = synthetic
    gt = _coco(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(r) for r in results])
        coco_eval = cocoeval_class(gt, dt, "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def test_the_fast_path_is_detectron2s_compiled_one_or_faster_coco_eval():
    from faster_coco_eval.core.faster_eval_api import COCOeval as FasterCOCOevalBase

    chosen = fast_cocoeval()
    if _detectron2_compiled():
        from detectron2.evaluation.fast_eval_api import COCOeval_opt

        assert chosen is COCOeval_opt
    else:
        assert issubclass(chosen, FasterCOCOevalBase), chosen


def test_synthetic_set_has_the_corner_cases(synthetic):
    dataset, results = synthetic
    anns = dataset["annotations"]
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any() and ((areas > 32**2) & (areas < 96**2)).any()
    assert (areas > 96**2).any()
    assert any(a["iscrowd"] for a in anns) and not all(a["iscrowd"] for a in anns)
    with_gt = {a["image_id"] for a in anns}
    assert len(with_gt) < len(dataset["images"])
    assert {r["image_id"] for r in results} - with_gt  # detections on images without gt
    per_image = np.bincount([r["image_id"] for r in results])
    assert (per_image == 100).any() and (per_image > 100).any() and (per_image < 10).any()
    assert len({r["score"] for r in results}) < len(results) * 0.6  # ties
    assert NEVER_ANNOTATED not in {a["category_id"] for a in anns}
    assert NEVER_DETECTED not in {r["category_id"] for r in results}


def _assert_same_precision(fast, reference):
    """Bit-equal, but for pycocotools' 1 - 2**-52 where tp + fp == 1 (see above)."""
    differ = fast != reference
    assert np.all(reference[differ] == 1 - 2**-52) and np.all(fast[differ] == 1.0), (
        f"{differ.sum()} precision values differ, not only pycocotools' 1 - 2**-52: "
        f"{list(zip(fast[differ][:5], reference[differ][:5]))}"
    )


def _with_file_name_ids(synthetic):
    """The set with image ids as gfl-d2's dataset folders name them (sorted unlike numbers)."""
    dataset, results = synthetic
    name = {im["id"]: f"images/val/{im['id']}" for im in dataset["images"]}
    dataset = dict(
        dataset,
        images=[dict(im, id=name[im["id"]]) for im in dataset["images"]],
        annotations=[dict(a, image_id=name[a["image_id"]]) for a in dataset["annotations"]],
    )
    return dataset, [dict(r, image_id=name[r["image_id"]]) for r in results]


@pytest.mark.parametrize("image_ids", ["numbers", "file names"])
def test_fast_cocoeval_gives_pycocotools_numbers(synthetic, image_ids):
    if image_ids == "file names":
        synthetic = _with_file_name_ids(synthetic)
    reference = _evaluate(COCOeval, synthetic)
    fast = _evaluate(fast_cocoeval(), synthetic)
    assert reference.stats.shape == fast.stats.shape == (12,)
    np.testing.assert_allclose(fast.stats, reference.stats, rtol=RTOL, atol=0)
    assert reference.eval["precision"].shape == fast.eval["precision"].shape
    _assert_same_precision(fast.eval["precision"], reference.eval["precision"])
    np.testing.assert_array_equal(fast.eval["recall"], reference.eval["recall"])
    np.testing.assert_array_equal(fast.eval["scores"], reference.eval["scores"])
    # the corner cases are in the numbers: no gt (-1) for one class, no detection (0) for one
    k = {c: i for i, c in enumerate(sorted(CATEGORY_IDS))}
    assert (reference.eval["precision"][:, :, k[NEVER_ANNOTATED]] == -1).all()
    assert (reference.eval["precision"][:, :, k[NEVER_DETECTED], 0] == 0).all()


@pytest.fixture
def registered(synthetic, tmp_path):
    """The synthetic set as a registered detectron2 dataset (COCO json), and its model outputs."""
    dataset, results = synthetic
    name = f"synthetic_fast_coco_eval_{tmp_path.name}"
    json_file = tmp_path / "gt.json"
    json_file.write_text(json.dumps(dataset))
    contiguous = {c: i for i, c in enumerate(CATEGORY_IDS)}
    MetadataCatalog.get(name).set(
        json_file=str(json_file),
        thing_classes=[f"class_{c}" for c in CATEGORY_IDS],
        thing_dataset_id_to_contiguous_id=contiguous,
    )
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    inputs, outputs = [], []
    for image_id in sorted(by_image):
        rs = by_image[image_id]
        xywh = torch.tensor([r["bbox"] for r in rs], dtype=torch.float64)
        instances = Instances((HEIGHT, WIDTH))
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        instances.scores = torch.tensor([r["score"] for r in rs])
        instances.pred_classes = torch.tensor([contiguous[r["category_id"]] for r in rs])
        inputs.append(dict(image_id=image_id))
        outputs.append(dict(instances=instances))
    yield name, inputs, outputs
    MetadataCatalog.remove(name)


@pytest.fixture
def spy(monkeypatch):
    """The COCOeval classes detectron2's evaluators ran, from a bare detectron2 module state."""
    ran = []
    derive = COCOEvaluator._derive_coco_results

    def recording(self, coco_eval, iou_type, class_names=None):
        ran.append(type(coco_eval))
        return derive(self, coco_eval, iou_type, class_names)

    monkeypatch.setattr(COCOEvaluator, "_derive_coco_results", recording)
    if not _detectron2_compiled():  # as detectron2 leaves it, before use_fast_cocoeval
        monkeypatch.setattr(coco_evaluation, "COCOeval_opt", COCOeval)
    return ran


def _run(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()["bbox"]


def test_evaluator_per_class_ap_matches_pycocotools(registered, spy, tmp_path):
    name, inputs, outputs = registered
    fast = _run(COCOEvaluatorWithCurves(name, output_dir=str(tmp_path)), inputs, outputs)
    official = _run(COCOEvaluator(name, use_fast_impl=False), inputs, outputs)
    assert spy == [fast_cocoeval(), COCOeval]
    assert fast.keys() == official.keys()
    assert {f"AP-class_{c}" for c in CATEGORY_IDS} <= set(fast)
    assert np.isnan(fast[f"AP-class_{NEVER_ANNOTATED}"])
    assert np.isnan(official[f"AP-class_{NEVER_ANNOTATED}"])
    names = [k for k in fast if not np.isnan(official[k])]
    np.testing.assert_allclose(
        [fast[k] for k in names], [official[k] for k in names], rtol=RTOL, atol=0
    )


def test_lazy_config_entry_point_evaluates_with_the_fast_path(registered, spy, monkeypatch):
    """tools/train_net.py's do_test, with a COCO config's evaluator (detectron2's own class)."""
    from gfl_d2 import training
    from gfl_d2.lazy_config import load_lazy_config

    name, inputs, outputs = registered
    cfg = load_lazy_config(f"{ROOT}/configs/COCO-Detection/gfl_R_50_FPN_1x.py")
    assert cfg.dataloader.evaluator._target_ is COCOEvaluator
    cfg.dataloader.evaluator.dataset_name = name
    cfg.dataloader.test = None

    def inference(model, loader, evaluator):
        assert evaluator._use_fast_impl
        return {"bbox": _run(evaluator, inputs, outputs)}

    monkeypatch.setattr(training, "inference_on_dataset", inference)
    monkeypatch.setattr(training, "print_csv_format", lambda results: None)
    results = training.do_test(cfg, torch.nn.Module())
    assert spy == [fast_cocoeval()] and fast_cocoeval() is not COCOeval
    assert results["bbox"]["AP"] > 0


def test_yacs_entry_points_evaluator_runs_the_fast_path(registered, spy, tmp_path):
    """projects/GFL/train_net.py's build_evaluator builds COCOEvaluatorWithCurves."""
    name, inputs, outputs = registered
    evaluator = COCOEvaluatorWithCurves(name, output_dir=str(tmp_path), allow_cached_coco=False)
    assert evaluator._use_fast_impl
    _run(evaluator, inputs, outputs)
    assert spy == [fast_cocoeval()] and fast_cocoeval() is not COCOeval


def test_pycocotools_when_faster_coco_eval_does_not_import(monkeypatch, caplog):
    if _detectron2_compiled():
        pytest.skip("detectron2's compiled COCOeval_opt is the fast path here")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # its import raises ImportError
    monkeypatch.delitem(sys.modules, "gfl_d2.faster_cocoeval", raising=False)
    fast_cocoeval.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=evaluation.__name__):
            assert fast_cocoeval() is COCOeval
            assert use_fast_cocoeval() is COCOeval
    finally:
        fast_cocoeval.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "faster-coco-eval cannot be imported" in warnings[0]
    assert "ImportError" in warnings[0] and "COCOeval_opt is not built" in warnings[0]


def test_speed_tool_writes_an_agreeing_report(tmp_path):
    from gfl_studies.coco_eval_speed import agree, render

    tool = ["tools/coco_eval_speed.py", "--results", tmp_path, "--name", "smoke"]
    run_tool([*tool, "--images", "40"])
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert agree(data) and data["precision_values_different_not_eps"] == 0
    assert data["dataset"]["images"] == 40 and data["speedup"] > 0
    markdown = (tmp_path / "smoke.md").read_text()
    assert markdown == render(data).rstrip("\n") + "\n"
    run_tool([*tool, "--report"])
    assert (tmp_path / "smoke.md").read_text() == markdown
