"""
An MMDetection-format GFL state dict (the key names and shapes of the released
checkpoints) and a forward pass written directly on it with torch.nn.functional,
following MMDetection's ResNet (pytorch style), FPN (extra convs on P5's output,
no ReLU before P7) and GFL head. Independent of detectron2's modules: used to
check that converted weights compute the same function.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def _bn(sd, prefix, c, g):
    sd[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def _conv(sd, key, cout, cin, k, g, bias=False):
    sd[f"{key}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
    if bias:
        sd[f"{key}.bias"] = 0.01 * torch.randn(cout, generator=g)


def mmdet_gfl_state_dict(depth=50, groups=1, width=64, num_classes=80, reg_max=16, channels=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    _conv(sd, "backbone.conv1", 64, 3, 7, g)
    _bn(sd, "backbone.bn1", 64, g)
    in_ch = 64
    for layer, n in enumerate(BLOCKS[depth], start=1):
        planes = 64 * 2 ** (layer - 1)
        mid = planes if groups == 1 else (planes * width // 64) * groups
        out = planes * 4
        for b in range(n):
            p = f"backbone.layer{layer}.{b}"
            _conv(sd, f"{p}.conv1", mid, in_ch, 1, g)
            _bn(sd, f"{p}.bn1", mid, g)
            _conv(sd, f"{p}.conv2", mid, mid // groups, 3, g)
            _bn(sd, f"{p}.bn2", mid, g)
            _conv(sd, f"{p}.conv3", out, mid, 1, g)
            _bn(sd, f"{p}.bn3", out, g)
            if b == 0:
                _conv(sd, f"{p}.downsample.0", out, in_ch, 1, g)
                _bn(sd, f"{p}.downsample.1", out, g)
            in_ch = out
    for i, c in enumerate([512, 1024, 2048]):
        _conv(sd, f"neck.lateral_convs.{i}.conv", channels, c, 1, g, bias=True)
    for i in range(5):
        _conv(sd, f"neck.fpn_convs.{i}.conv", channels, channels, 3, g, bias=True)
    for tower in ("cls", "reg"):
        for i in range(4):
            _conv(sd, f"bbox_head.{tower}_convs.{i}.conv", channels, channels, 3, g)
            sd[f"bbox_head.{tower}_convs.{i}.gn.weight"] = 1 + 0.1 * torch.randn(channels, generator=g)
            sd[f"bbox_head.{tower}_convs.{i}.gn.bias"] = 0.1 * torch.randn(channels, generator=g)
    _conv(sd, "bbox_head.gfl_cls", num_classes, channels, 3, g, bias=True)
    _conv(sd, "bbox_head.gfl_reg", 4 * (reg_max + 1), channels, 3, g, bias=True)
    for i in range(5):
        sd[f"bbox_head.scales.{i}.scale"] = torch.tensor(1.0 + 0.1 * i)
    return sd


def _bn_eval(sd, p, x):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


@torch.no_grad()
def reference_forward(sd, x, depth=50, groups=1):
    """x: (N, 3, H, W) normalised images -> ([P3..P7], [cls per level], [reg per level])."""
    x = F.relu(_bn_eval(sd, "backbone.bn1", F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, 2, 1)
    stages = []
    for layer, n in enumerate(BLOCKS[depth], start=1):
        for b in range(n):
            p = f"backbone.layer{layer}.{b}"
            stride = 2 if (b == 0 and layer > 1) else 1
            out = F.relu(_bn_eval(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
            out = F.relu(_bn_eval(sd, f"{p}.bn2", F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1,
                                                            groups=groups)))
            out = _bn_eval(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            identity = x
            if b == 0:
                identity = _bn_eval(sd, f"{p}.downsample.1", F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride))
            x = F.relu(out + identity)
        stages.append(x)
    c3, c4, c5 = stages[1:]
    lat = [F.conv2d(c, sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"])
           for i, c in enumerate([c3, c4, c5])]
    for i in (2, 1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [F.conv2d(lat[i], sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"], padding=1)
            for i in range(3)]
    outs.append(F.conv2d(outs[2], sd["neck.fpn_convs.3.conv.weight"], sd["neck.fpn_convs.3.conv.bias"], stride=2, padding=1))
    outs.append(F.conv2d(outs[3], sd["neck.fpn_convs.4.conv.weight"], sd["neck.fpn_convs.4.conv.bias"], stride=2, padding=1))
    cls_scores, bbox_preds = [], []
    for level, f in enumerate(outs):
        c, r = f, f
        for i in range(4):
            c = F.relu(F.group_norm(F.conv2d(c, sd[f"bbox_head.cls_convs.{i}.conv.weight"], padding=1), 32,
                                    sd[f"bbox_head.cls_convs.{i}.gn.weight"], sd[f"bbox_head.cls_convs.{i}.gn.bias"]))
            r = F.relu(F.group_norm(F.conv2d(r, sd[f"bbox_head.reg_convs.{i}.conv.weight"], padding=1), 32,
                                    sd[f"bbox_head.reg_convs.{i}.gn.weight"], sd[f"bbox_head.reg_convs.{i}.gn.bias"]))
        cls_scores.append(F.conv2d(c, sd["bbox_head.gfl_cls.weight"], sd["bbox_head.gfl_cls.bias"], padding=1))
        reg = F.conv2d(r, sd["bbox_head.gfl_reg.weight"], sd["bbox_head.gfl_reg.bias"], padding=1)
        bbox_preds.append(reg * sd[f"bbox_head.scales.{level}.scale"])
    return outs, cls_scores, bbox_preds
