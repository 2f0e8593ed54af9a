"""
Deformable convolution on torchvision's op (gfl_d2.modeling.deform_conv)
against an independent float64 implementation with the bilinear sampling
written out: values and gradients, v1 and modulated, groups and deformable
groups, offsets that reach outside the image; and the deformable bottleneck
block against a plain one while its offsets are zero.
"""

import pytest
import torch
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch.nn import functional as F

from gfl_d2.modeling.deform_conv import DeformBottleneckBlock, DeformConv, ModulatedDeformConv


def _bilinear(x, py, px):
    """
    x (C, H, W) sampled at (P,) real positions: the four neighbours weighted
    bilinearly, a neighbour outside the image counting as zero -> (C, P).
    """
    _, h, w = x.shape
    y0, x0 = torch.floor(py), torch.floor(px)
    out = 0
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            wy = 1 - (py - yy).abs()
            wx = 1 - (px - xx).abs()
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            yi, xi = yy.clamp(0, h - 1).long(), xx.clamp(0, w - 1).long()
            out = out + x[:, yi, xi] * (wy * wx * inside)
    return out


def reference(x, offset, weight, mask=None, stride=1, padding=1, dilation=1):
    """Deformable convolution as the papers define it, one kernel point at a time, in float64."""
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    groups = cin // cin_g
    dgroups = offset.shape[1] // (2 * kh * kw)
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    base_y = (torch.arange(ho, dtype=x.dtype) * stride - padding)[:, None].expand(ho, wo)
    base_x = (torch.arange(wo, dtype=x.dtype) * stride - padding)[None, :].expand(ho, wo)
    outs = []
    for b in range(n):
        cols = []  # per kernel point, the sampled input (C_in, Ho*Wo)
        for k in range(kh * kw):
            ky, kx = divmod(k, kw)
            per_group = []
            for g in range(dgroups):
                dy = offset[b, g * 2 * kh * kw + 2 * k]
                dx = offset[b, g * 2 * kh * kw + 2 * k + 1]
                py = (base_y + ky * dilation + dy).reshape(-1)
                px = (base_x + kx * dilation + dx).reshape(-1)
                chans = x[b, g * cin // dgroups : (g + 1) * cin // dgroups]
                sampled = _bilinear(chans, py, px)
                if mask is not None:
                    sampled = sampled * mask[b, g * kh * kw + k].reshape(1, -1)
                per_group.append(sampled)
            cols.append(torch.cat(per_group, dim=0))
        col = torch.stack(cols, dim=1)  # (C_in, K, Ho*Wo)
        out = []
        for gi in range(groups):
            wg = weight[gi * cout // groups : (gi + 1) * cout // groups].reshape(cout // groups, -1)
            cg = col[gi * cin_g : (gi + 1) * cin_g].reshape(cin_g * kh * kw, -1)
            out.append(wg @ cg)
        outs.append(torch.cat(out, dim=0).reshape(cout, ho, wo))
    return torch.stack(outs)


CASES = [
    dict(modulated=False, groups=1, dgroups=1, stride=1, dilation=1),
    dict(modulated=True, groups=1, dgroups=1, stride=1, dilation=1),
    dict(modulated=True, groups=2, dgroups=2, stride=2, dilation=1),
    dict(modulated=False, groups=2, dgroups=1, stride=1, dilation=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_values_and_gradients_equal_the_float64_reference(case):
    g = torch.Generator().manual_seed(0)
    cin, cout, h, w = 4, 6, 7, 9
    layer_type = ModulatedDeformConv if case["modulated"] else DeformConv
    layer = layer_type(
        cin, cout, 3, stride=case["stride"], padding=case["dilation"], dilation=case["dilation"],
        groups=case["groups"], deformable_groups=case["dgroups"],
    ).double()  # fmt: skip
    x = torch.randn(2, cin, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    ho = (h + 2 * case["dilation"] - 2 * case["dilation"] - 1) // case["stride"] + 1
    wo = (w + 2 * case["dilation"] - 2 * case["dilation"] - 1) // case["stride"] + 1
    # offsets up to 4 pixels: many samples fall partly or wholly outside the image
    offset = torch.rand(2, layer.offset_channels, ho, wo, generator=g, dtype=torch.float64) * 8 - 4
    offset.requires_grad_(True)
    mask = None
    if case["modulated"]:
        mask = torch.rand(2, case["dgroups"] * 9, ho, wo, generator=g, dtype=torch.float64)
        mask.requires_grad_(True)
        got = layer(x, offset, mask)
    else:
        got = layer(x, offset)
    want = reference(
        x, offset, layer.weight, mask, case["stride"], case["dilation"], case["dilation"]
    )
    if layer.bias is not None:
        want = want + layer.bias[None, :, None, None]
    # float64 sums of ~100 products of values of order 1: agreement to ~1e-13
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    upstream = torch.randn(got.shape, generator=g, dtype=torch.float64)
    inputs = [x, offset, layer.weight] + ([mask] if mask is not None else [])
    got_grads = torch.autograd.grad((got * upstream).sum(), inputs)
    want_grads = torch.autograd.grad((want * upstream).sum(), inputs)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_offsets_entirely_outside_the_image_sample_zeros():
    layer = DeformConv(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    offset = torch.full((1, 18, 5, 5), 50.0, dtype=torch.float64)
    assert layer(x, offset).abs().max() == 0


def test_zero_offsets_are_a_plain_convolution():
    layer = DeformConv(4, 6, 3, padding=1, groups=2).double()
    x = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    got = layer(x, torch.zeros(2, 18, 6, 8, dtype=torch.float64))
    torch.testing.assert_close(got, F.conv2d(x, layer.weight, padding=1, groups=2))


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_block_starts_as_detectron2s_plain_bottleneck(modulated):
    """Zero-initialised offsets (and masks at 0.5 with modulation): the same outputs."""
    kwargs = dict(bottleneck_channels=8, stride=2, num_groups=2, norm="FrozenBN")
    torch.manual_seed(0)
    deform = DeformBottleneckBlock(16, 32, deform_modulated=modulated, **kwargs).eval()
    plain = BottleneckBlock(16, 32, **kwargs).eval()
    state = {k: v for k, v in deform.state_dict().items() if not k.startswith("conv2_offset")}
    plain.load_state_dict(state)
    names = set(deform.state_dict())
    assert {"conv2_offset.weight", "conv2_offset.bias", "conv2.weight"} <= names
    assert deform.conv2_offset.out_channels == (27 if modulated else 18)
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        if modulated:  # the mask is sigmoid(0) = 0.5: half of the plain 3x3 conv's output
            plain.conv2.weight.mul_(0.5)
        torch.testing.assert_close(deform(x), plain(x), rtol=1e-5, atol=1e-5)


def test_autocast_and_tracing():
    block = DeformBottleneckBlock(
        8, 8, bottleneck_channels=4, norm="FrozenBN", deform_modulated=True
    )
    block.conv2_offset.weight.data.normal_(0, 0.1)  # offsets that move the samples
    x = torch.randn(1, 8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert torch.isfinite(y).all()
    with torch.no_grad():
        traced = torch.jit.trace(block.eval(), x)
        torch.testing.assert_close(traced(x), block(x))


def test_deformable_stages_of_a_resnet_start_as_the_plain_resnet():
    """make_bottleneck_stages's switches: res3-res5 deformable, plain weights load, same output."""
    from detectron2.modeling.backbone import BasicStem, ResNet

    from gfl_d2.modeling import make_bottleneck_stages

    def resnet(deform):
        torch.manual_seed(0)
        stages = make_bottleneck_stages(
            depth=50, deform_on_per_stage=deform, norm="FrozenBN", stride_in_1x1=False
        )
        stem = BasicStem(in_channels=3, out_channels=64, norm="FrozenBN")
        return ResNet(stem, stages, out_features=["res3", "res4", "res5"]).eval()

    plain, deform = resnet([False] * 4), resnet([False, True, True, True])
    extra = set(deform.state_dict()) - set(plain.state_dict())
    assert extra and all(".conv2_offset." in k for k in extra)
    assert not any(k.startswith("res2.") for k in extra) and "res5.2.conv2_offset.weight" in extra
    assert deform.res3[0].conv2_offset.out_channels == 18  # v1: (dy, dx) per kernel point
    deform.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = plain(x), deform(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="4 values"):
        make_bottleneck_stages(depth=50, deform_on_per_stage=[True])


def test_yacs_deform_switches_build_the_lazyconfig_resnet():
    """MODEL.RESNETS.DEFORM_* in a yacs config: the same backbone as make_bottleneck_stages."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from gfl_d2 import add_gfl_config
    from gfl_d2.model_zoo import get_config_file

    cfg = add_gfl_config(get_cfg())
    cfg.merge_from_file(get_config_file("gfl_R_50_FPN_1x.yaml"))
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = True
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    res4 = model.backbone.bottom_up.res4[0]
    assert isinstance(res4, DeformBottleneckBlock) and res4.conv2_offset.out_channels == 27
    assert not isinstance(model.backbone.bottom_up.res2[0], DeformBottleneckBlock)
    with torch.no_grad():
        model.eval()([{"image": torch.zeros(3, 64, 64)}])
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    with pytest.raises(ValueError, match="DEPTH >= 50"):
        build_model(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("modulated", [False, True])
def test_cuda_kernel_equals_the_float64_reference_and_runs_under_autocast(modulated):
    """torchvision's CUDA kernel, the path of the GPU check: values, gradients, fp16 autocast."""
    g = torch.Generator().manual_seed(0)
    layer_type = ModulatedDeformConv if modulated else DeformConv
    layer = layer_type(4, 6, 3, padding=1, groups=2, deformable_groups=2).double()
    x = torch.randn(2, 4, 7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    offset = torch.rand(2, layer.offset_channels, 7, 9, generator=g, dtype=torch.float64) * 8 - 4
    mask = torch.rand(2, 18, 7, 9, generator=g, dtype=torch.float64) if modulated else None
    args = (offset, mask) if modulated else (offset,)
    want = reference(x, offset, layer.weight, mask)
    if layer.bias is not None:
        want = want + layer.bias[None, :, None, None]
    cuda_layer = layer.cuda()
    got = cuda_layer(x.cuda(), *[a.cuda() for a in args])
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-10)
    grad = torch.autograd.grad(got.sum(), x)[0]
    torch.testing.assert_close(grad.cpu(), torch.autograd.grad(want.sum(), x)[0], rtol=0, atol=1e-9)
    with torch.autocast("cuda", dtype=torch.float16):
        half = cuda_layer.float()(x.float().cuda(), *[a.float().cuda() for a in args])
    # computed in float32 inside autocast: float32 rounding of sums of ~20 terms of order 1
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double().cpu(), want, rtol=0, atol=1e-4)
