"""
GFL's raw outputs (gfl_d2.raw_outputs) and the NumPy reference decoder
(gfl_d2.edge_decoder): decoding the raw outputs as documented gives the
model's own detections, for a ResNet GFL (V1 and V2) and NanoDet-Plus.
"""

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from gfl_d2.edge_decoder import decode, nms
from gfl_d2.errors import UsageError
from gfl_d2.model_zoo import get_config_file
from gfl_d2.raw_outputs import RawOutputs
from gfl_d2.testing import tiny_gfl_config


def confident(model, bias=-2.0, scale=1.0, seed=0):
    """
    Head weights that give many varied detections (at initialisation all score ~0.01, and
    NanoDet's towers, at std 0.01, make every location score alike).
    """
    g = torch.Generator().manual_seed(seed)
    head = model.head
    outputs = [head.cls_score] if hasattr(head, "cls_score") else list(head.outputs)
    with torch.no_grad():
        for m in head.modules():  # He-scaled towers: locations that differ
            if isinstance(m, torch.nn.Conv2d) and all(m is not o for o in outputs):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5
                )
        for conv in outputs:
            conv.weight.copy_(
                torch.randn(conv.weight.shape, generator=g) * scale / conv.weight[0].numel() ** 0.5
            )
            conv.bias[: model.num_classes].fill_(bias)
        # BatchNorm statistics of one random batch, as a trained network's: unit-scale features
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in norms:
            m.momentum = 1.0
        model.train()
        x = torch.rand(2, 3, 128, 128, generator=g) * 255
        features = model.backbone((x - model.pixel_mean) / model.pixel_std)
        model.head([features[f] for f in model.head_in_features])
    return model.eval()


def check_decoder(model, h, w, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g) * 255
    raw_model = RawOutputs(model)
    with torch.no_grad():
        raw = raw_model(image[None])
        want = model([{"image": image, "height": h, "width": w}])[0]["instances"]
    assert raw.shape[-1] == model.num_classes + 4 * (model.box2box_transform.reg_max + 1)
    got = decode(raw[0].numpy(), (h, w), raw_model.layout)
    assert len(want) > 20 and len(got["scores"]) == len(want)
    # both by decreasing score: equal scores may come in either order, so compare by class and box
    got = canonical(got["boxes"], got["scores"], got["classes"])
    want = canonical(want.pred_boxes.tensor.numpy(), want.scores.numpy(), want.pred_classes.numpy())
    np.testing.assert_array_equal(got[2], want[2])
    # float32 softmax/integral in NumPy vs torch: rounding of values ~1, boxes of ~100 px
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-3)


def canonical(boxes, scores, classes):
    """Detections ordered by class and box (0.01 px)."""
    order = np.lexsort((*np.round(boxes / 0.01).T[::-1], classes))
    return boxes[order], scores[order], classes[order]


@pytest.mark.parametrize("quality", ["joint", "dgqp"])
def test_decoding_the_raw_outputs_gives_the_models_detections(quality):
    torch.manual_seed(0)
    model = confident(instantiate(tiny_gfl_config(num_classes=3, quality=quality)))
    check_decoder(model, 256, 384)


def test_nanodet_plus_raw_outputs_decode_to_its_detections():
    torch.manual_seed(0)
    cfg = LazyConfig.load(get_config_file("COCO-Detection/NanoDet/nanodet_plus_m_320.py"))
    check_decoder(confident(instantiate(cfg.model), bias=-3.0, scale=0.01), 320, 320)


def test_nms_and_refusals():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.1]), 0.6).tolist() == [1, 2]
    assert nms(boxes, np.array([0.5, 0.9, 0.1]), 0.9).tolist() == [1, 0, 2]
    model = instantiate(tiny_gfl_config(box_representation="dirac"))
    with pytest.raises(UsageError, match="one distance per edge"):
        RawOutputs(model)
    model = instantiate(tiny_gfl_config())
    with pytest.raises(UsageError, match="multiples of"):
        RawOutputs(model)(torch.zeros(1, 3, 100, 128))


def export_confident_nanodet(tmp_path, outputs: str):
    """
    NanoDet-Plus-m 320 with 4 classes and confident random weights, saved and
    exported by the tool with ``--outputs outputs``; (the model, the export folder).
    """
    import os

    from detectron2.checkpoint import DetectionCheckpointer

    from .repo import ROOT, run_tool

    config = os.path.join(ROOT, "configs", "COCO-Detection", "NanoDet", "nanodet_plus_m_320.py")
    torch.manual_seed(0)
    cfg = LazyConfig.load(config)
    cfg.model.num_classes = 4  # fewer candidates: scores far enough apart for one NMS outcome
    model = confident(instantiate(cfg.model), bias=-2.0, scale=0.05)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    out = tmp_path / "export"
    run_tool(
        ["tools/export_model.py", "--config-file", config, "--format", "onnx", "--outputs",
         outputs, "--output", out, f"train.init_checkpoint={tmp_path / 'weights.pth'}",
         "model.num_classes=4"]
    )  # fmt: skip
    return model, out


def test_raw_onnx_export_runs_at_any_batch_and_decodes_to_the_models_detections(tmp_path):
    """The edge pipeline end to end: the tool's raw ONNX in ONNX Runtime, then the decoder."""
    import json

    import onnxruntime

    model, out = export_confident_nanodet(tmp_path, "raw")
    check = json.loads((out / "export_check.json").read_text())
    assert [c["batch"] for c in check["checks"]] == [1, 4, 1] and all(
        c["ok"] for c in check["checks"]
    )
    layout = json.loads((out / "raw_layout.json").read_text())
    session = onnxruntime.InferenceSession(str(out / "model_raw.onnx"))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 320, 320, generator=g) * 255
    raw = session.run(None, {"images": images.numpy()})[0]
    assert raw.shape == (3, 40 * 40 + 20 * 20 + 10 * 10 + 5 * 5, 4 + 32)
    for image, image_raw in zip(images, raw):
        with torch.no_grad():
            want = model([{"image": image, "height": 320, "width": 320}])[0]["instances"]
        got = canonical(**decode(image_raw, (320, 320), layout))
        want = canonical(
            want.pred_boxes.tensor.numpy(), want.scores.numpy(), want.pred_classes.numpy()
        )
        assert len(want[2]) > 20
        np.testing.assert_array_equal(got[2], want[2])
        # ONNX Runtime's kernels against torch's: the raw check's tolerance (RAW_TOL)
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-2)
