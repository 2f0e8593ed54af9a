"""
Fused float32 CPU inference (``cpu_inference="fused"``, ``gfl_d2.cpu_fused``): detectron2's
ResNets with their batch norms folded and their ReLUs and residual additions computed by
oneDNN's convolutions, equal to eager up to float32 rounding.
"""

import pytest
import torch
from detectron2.config import instantiate
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch import nn

from gfl_d2.cpu_fused import FusedConv, fuse_convolutions
from gfl_d2.cpu_inference import FusedCPUDetector, for_cpu_inference
from gfl_d2.model_zoo import get_config
from gfl_d2.testing import tiny_gfl, two_image_batch

from .test_frozen_inference import ROUNDINGS, assert_same_detections, confident

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"
)


def trained_like(module):
    """Frozen batch norms with statistics and affine parameters away from the identity."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = len(m.weight)
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return module.eval()


def resnet(depth):
    torch.manual_seed(0)
    stages = ResNet.make_default_stages(depth, norm="FrozenBN")
    stem = BasicStem(3, 64, norm="FrozenBN")
    return trained_like(ResNet(stem, stages, out_features=["res2", "res3", "res4", "res5"]))


@pytest.mark.parametrize("depth, blocks", [(18, 8), (50, 16)])
def test_fused_resnet_equals_eager_up_to_rounding(depth, blocks):
    model = resnet(depth)
    fused, count = fuse_convolutions(model)
    assert count == blocks + 1  # and the stem
    assert isinstance(model.stem, BasicStem)  # the original is left as it is
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, actual = model(x), fused(x)
    for name, e in expected.items():
        assert actual[name].is_contiguous(memory_format=torch.channels_last)
        scale = e.abs().max().item()
        assert (actual[name] - e).abs().max().item() <= ROUNDINGS * scale, name


def test_blocks_that_do_not_fold_stay():
    model = tiny_gfl().eval()  # GroupNorm in every block: only the FPN's convolutions fold
    fused, count = fuse_convolutions(model.backbone)
    assert count == 0 and isinstance(fused.fpn_output3, FusedConv)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, actual = model.backbone(x), fused(x)
    for name, e in expected.items():
        assert (actual[name] - e).abs().max().item() <= ROUNDINGS * e.abs().max().item(), name
    assert fuse_convolutions(resnet(18))[1] == 9
    grouped = resnet(18)
    grouped.res2[0].conv1.norm = torch.nn.GroupNorm(32, 64)  # normalises by the input's statistics
    fused, count = fuse_convolutions(grouped)
    assert count == 8 and fused.res2[0].conv1.norm is not None


def gfl_r50():
    torch.manual_seed(0)
    return confident(
        trained_like(instantiate(get_config("COCO-Detection/gfl_R_50_FPN_1x.py").model))
    )


def test_fused_detections_equal_eager_and_follow_new_weights():
    model = gfl_r50()
    fused = for_cpu_inference(model, "fused").eval()
    assert isinstance(fused, FusedCPUDetector)
    data = [dict(x, height=200, width=180) for x in two_image_batch()]
    with torch.no_grad():
        eager, out = model(data), fused(data)
    inference = fused._fused
    assert inference.fused_blocks == 17
    # every convolution runs through oneDNN: the FPN's (called from plain lists) and the head's
    backbone = inference._fused[0]
    assert not any(type(m) in (nn.Conv2d, Conv2d) for m in inference._fused.modules())
    convs = backbone.lateral_convs + backbone.output_convs
    assert len(convs) == 6 and all(isinstance(c, FusedConv) for c in convs)
    assert any(isinstance(m, BottleneckBlock) for m in model.modules())  # model untouched
    for e, o in zip(eager, out):
        e, o = e["instances"], o["instances"]
        assert len(e) > 10 and o.image_size == (200, 180)
        assert_same_detections(o, e, model)

    key = inference._key
    with torch.no_grad():
        model.head.cls_score.bias.add_(0.5)  # in place: the fused copy is rebuilt
        out, eager = fused(data), model(data)
    assert inference._key != key
    for e, o in zip(eager, out):
        assert_same_detections(o["instances"], e["instances"], model)
