"""
Export of a GFL with deformable stages (gfl_d2.modeling.deform_conv):
TorchScript, and ONNX at opset 19 with torchvision's deform_conv2d as ONNX
DeformConv, run by onnxruntime and equal to the eager model at two sizes.
The offset convolutions get random weights (they start at zero, where a
deformable convolution is a plain one), so the samples move by up to a few
pixels, many of them off the integer grid and some outside the image.
"""

import os

import onnx
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BottleneckBlock

from gfl_d2.data import write_split
from gfl_d2.errors import UsageError
from gfl_d2.export import export
from gfl_d2.lazy_config import load_lazy_config
from gfl_d2.modeling.deform_conv import DeformBottleneckBlock

from .repo import ROOT

CONFIG = os.path.join(ROOT, "configs", "Synthetic", "gfl_R_18_FPN_shapes.py")


def narrow_deformable_stages(deform_modulated: bool, deform_num_groups: int):
    """
    res2 plain, res3-res5 deformable: one GroupNorm bottleneck block each, narrow
    (a ResNet-50's 16 blocks of up to 2048 channels take minutes to export on a CPU).
    """
    deform = dict(deform_modulated=deform_modulated, deform_num_groups=deform_num_groups)
    specs = [(BottleneckBlock, 32, 64, 32, 1, {})] + [
        (DeformBottleneckBlock, cin, cout, mid, 2, deform)
        for cin, cout, mid in ((64, 128, 32), (128, 192, 32), (192, 256, 64))
    ]
    return [
        ResNet.make_stage(
            block_class=block,
            num_blocks=1,
            stride_per_block=[stride],
            in_channels=cin,
            out_channels=cout,
            bottleneck_channels=mid,
            norm="GN",
            **kwargs,
        )  # fmt: skip
        for block, cin, cout, mid, stride, kwargs in specs
    ]


def deformable_config(weights: str, modulated: bool, groups: int):
    cfg = load_lazy_config(
        CONFIG, [f"train.init_checkpoint={weights}", "model.test_score_thresh=0.0"]
    )
    bottom_up = cfg.model.backbone.bottom_up
    bottom_up.stem = L(BasicStem)(in_channels=3, out_channels=32, norm="GN")
    bottom_up.stages = L(narrow_deformable_stages)(
        deform_modulated=modulated, deform_num_groups=groups
    )
    return cfg


@pytest.fixture(scope="module")
def deformable(tmp_path_factory):
    """
    (modulated, offset groups) -> (config, sample image, output folder) of a GFL with
    deformable res3-res5, its weights saved.
    """
    made = {}

    def make(modulated: bool, groups: int):
        if (modulated, groups) not in made:
            tmp = tmp_path_factory.mktemp("export_deform")
            cfg = deformable_config(str(tmp / "weights.pth"), modulated, groups)
            torch.manual_seed(0)
            model = instantiate(cfg.model)
            with torch.no_grad():
                model.head.bbox_pred.bias.view(4, -1)[:, 1:4] += torch.tensor([3.0, 2.0, 1.0])
                for block in model.modules():
                    if isinstance(block, DeformBottleneckBlock):
                        # offsets of up to +-1.5 px plus a spatially varying part (std ~0.6 px)
                        block.conv2_offset.weight.normal_(0.0, 0.05)
                        block.conv2_offset.bias.uniform_(-1.5, 1.5)
            DetectionCheckpointer(model, save_dir=str(tmp)).save("weights")
            write_split(str(tmp / "imgs"), "x", 1, seed=3, progress=False)
            made[modulated, groups] = cfg, str(tmp / "imgs" / "x" / "000000.png"), tmp
        return made[modulated, groups]

    return make


@pytest.mark.parametrize(
    "fmt, modulated, groups",
    [("onnx", False, 1), ("onnx", True, 2), ("torchscript", False, 1)],
    ids=["onnx-v1", "onnx-modulated-2groups", "torchscript-v1"],
)
def test_deformable_model_exports_equal_to_eager(deformable, fmt, modulated, groups):
    cfg, image, tmp = deformable(modulated, groups)
    path, report = export(cfg, str(tmp / fmt), fmt, sample_image=image)
    # verify's tolerances (boxes 1e-3 px, scores 1e-4) at 128x128 and 96x128; measured about
    # 5e-5 px and 1e-7 (ONNX): float32 rounding (onnxruntime's DeformConv agrees with torchvision's
    # to ~1e-6 of the values, as two float32 summation orders do)
    for check in (report, report["other_size"]):
        assert check["detections"] == 100 and check["classes_equal"]
        assert check["max_box_diff"] <= 1e-3 and check["max_score_diff"] <= 1e-4
    assert report["other_size"]["size"] == [96, 128]
    if fmt == "onnx":
        model = onnx.load(path)
        assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {19}
        nodes = [n for n in model.graph.node if n.op_type == "DeformConv"]
        assert len(nodes) == 3  # res3-res5, one block each
        for node in nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["offset_group"] == groups and list(attrs["pads"]) == [1, 1, 1, 1]
            assert len(node.input) == (5 if modulated else 4)  # X, W, offset, B (, mask)


def test_onnx_refused_clearly_without_a_runtime_deform_conv(deformable, monkeypatch):
    """An onnxruntime without a DeformConv kernel: a refusal that names the TorchScript route."""
    import onnxruntime

    def no_deform_conv(*args, **kwargs):
        raise RuntimeError("NOT_IMPLEMENTED : Could not find an implementation for DeformConv(19)")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_deform_conv)
    cfg, image, tmp = deformable(False, 1)
    with pytest.raises(UsageError, match="DeformConv.*--format torchscript"):
        export(cfg, str(tmp / "refused"), "onnx", sample_image=image)
    assert not os.path.exists(tmp / "refused" / "model.onnx")
