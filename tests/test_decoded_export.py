"""
The decoded per-location outputs (gfl_d2.decoded_outputs: every location's
box and class scores, before any selection) and their ONNX export
(``tools/export_model.py --outputs decoded``): with the NumPy selection
(gfl_d2.edge_decoder.select) they give the model's own detections, for a
ResNet GFL (V1 and V2) and NanoDet-Plus, eager and in ONNX Runtime at any batch.
"""

import collections
import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from detectron2.config import instantiate

from gfl_d2.decoded_outputs import DecodedOutputs
from gfl_d2.edge_decoder import decoded_boxes, select
from gfl_d2.errors import UsageError
from gfl_d2.export_raw import export_dense_onnx
from gfl_d2.raw_outputs import RawOutputs
from gfl_d2.testing import tiny_gfl_config

from .test_edge_decoder import canonical, confident, export_confident_nanodet


def detections(model, image):
    h, w = image.shape[-2:]
    with torch.no_grad():
        found = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    return canonical(
        found.pred_boxes.tensor.numpy(), found.scores.numpy(), found.pred_classes.numpy()
    )


def assert_same_detections(got, want, score_atol, box_atol):
    """Classes equal, scores and boxes within the tolerances (both in canonical order)."""
    assert len(want[2]) > 20
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=score_atol)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=box_atol)


def check_selection(model, h, w):
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)) * 255
    wrapper = DecodedOutputs(model)
    with torch.no_grad():
        boxes, scores = wrapper(image[None])
    c = model.num_classes
    assert boxes.shape == (1, scores.shape[1], 4) and scores.shape[-1] == c
    got = canonical(**select(boxes[0].numpy(), scores[0].numpy(), (h, w), wrapper.layout))
    # the same float32 operations as the model's, in another order: rounding of boxes ~100 px
    assert_same_detections(got, detections(model, image), score_atol=1e-6, box_atol=1e-3)
    # the NumPy decoding of the raw outputs gives the same boxes and scores
    with torch.no_grad():
        raw = RawOutputs(model)(image[None])[0].numpy()
    np_boxes, np_scores = decoded_boxes(raw, (h, w), wrapper.layout)
    np.testing.assert_allclose(np_scores, scores[0].numpy(), rtol=0, atol=1e-6)
    inside = np.clip(np_boxes, 0, [w, h, w, h])  # the module clips, decoded_boxes does not
    np.testing.assert_allclose(inside, boxes[0].numpy(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("quality", ["joint", "dgqp"])
def test_decoded_outputs_select_to_the_models_detections(quality):
    torch.manual_seed(0)
    check_selection(
        confident(instantiate(tiny_gfl_config(num_classes=3, quality=quality))), 256, 384
    )


def test_selection_drops_empty_and_non_finite_boxes():
    layout = dict(
        strides=[8], point_offset=0.0, num_classes=2, reg_max=7, bin_width=1.0,
        size_divisibility=8, score_thresh=0.05, topk_candidates=1000, nms_thresh=0.6,
        max_detections=100,
    )  # fmt: skip
    boxes = np.zeros((4, 4), np.float32)
    boxes[0] = [1, 1, 5, 5]  # kept
    boxes[1] = [-np.inf, 0, 4, 4]  # non-finite: dropped, as the model drops it
    boxes[2] = [9, 2, 12, 6]  # empty once clipped to the 8 px wide image
    boxes[3] = [2, 2, np.nan, 6]
    scores = np.full((4, 2), 0.01, np.float32)
    scores[:, 1] = [0.9, 0.8, 0.7, 0.6]
    found = select(boxes, scores, (8, 8), layout)
    assert found["classes"].tolist() == [1] and found["boxes"].tolist() == [[1, 1, 5, 5]]


def test_decoded_outputs_refuse_a_model_without_distributions():
    with pytest.raises(UsageError, match="one distance per edge"):
        DecodedOutputs(instantiate(tiny_gfl_config(box_representation="dirac")))


def test_gfl_v2_decoded_onnx_export_is_checked_at_two_batches_and_sizes(tmp_path):
    torch.manual_seed(0)
    model = confident(instantiate(tiny_gfl_config(num_classes=3, quality="dgqp")))
    image = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(2)) * 255
    path, report = export_dense_onnx(model, image, str(tmp_path), "decoded")
    assert [(c["batch"], c["size"]) for c in report["checks"]] == [
        (1, [224, 320]), (4, [224, 320]), (1, [192, 256])
    ]  # fmt: skip
    assert report["folded_input_scale"] and all(c["ok"] for c in report["checks"])
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores"]
    assert session.get_outputs()[0].shape == ["batch", "locations", 4]


def test_decoded_onnx_export_selects_to_the_models_detections_at_any_batch(tmp_path):
    """The tool's decoded ONNX in ONNX Runtime at batch 3, then the NumPy selection."""
    model, out = export_confident_nanodet(tmp_path, "decoded")
    check = json.loads((out / "export_check.json").read_text())
    assert [c["batch"] for c in check["checks"]] == [1, 4, 1]
    # a graph ONNX Runtime runs fast: BatchNorm folded into the convs, the std's division
    # into the first one, and no shape arithmetic in the network (one Gather per ShuffleNet
    # unit, its channel shuffle; the channel splits by constant sizes)
    nodes = onnx.load(str(out / "model_decoded.onnx")).graph.node
    inside = collections.Counter(n.op_type for n in nodes if n.name.startswith("/backbone"))
    assert inside["Gather"] == 16 and inside["Split"] == 13
    assert not {"Shape", "Slice", "Reshape", "BatchNormalization", "Div"} & set(inside)
    assert sum(n.op_type == "Div" for n in nodes) == 0
    layout = json.loads((out / "decoded_layout.json").read_text())
    session = onnxruntime.InferenceSession(str(out / "model_decoded.onnx"))
    images = torch.rand(3, 3, 320, 320, generator=torch.Generator().manual_seed(1)) * 255
    boxes, scores = session.run(None, {"images": images.numpy()})
    assert boxes.shape == (3, 40 * 40 + 20 * 20 + 10 * 10 + 5 * 5, 4) and scores.shape[-1] == 4
    for image, b, s in zip(images, boxes, scores):
        got = canonical(**select(b, s, (320, 320), layout))
        # ONNX Runtime's kernels against torch's: the export check's tolerances
        box_atol = 1e-3 + 2e-4 * 320  # dense_tolerance("boxes") for boxes inside 320 px
        assert_same_detections(got, detections(model, image), score_atol=1e-4, box_atol=box_atol)
