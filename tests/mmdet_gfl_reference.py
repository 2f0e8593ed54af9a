"""
An MMDetection-format GFL state dict (the keys, shapes and dtypes MMDetection
itself saves, recorded in tests/fixtures by make_mmdet_gfl_fixture.py) and a
forward pass written directly on it with torch.nn.functional, following
MMDetection's ResNet (pytorch style), FPN (extra convs on P5's output, no ReLU
before P7) and GFL head. Independent of detectron2's modules: used to check that
converted weights compute the same function.
"""

import json
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIXTURE = os.path.join(FIXTURES, "mmdet_gfl_state_dicts.json")
# GFL V2's detectors as the authors' own code (implus/GFocalV2) builds them
GFOCALV2_FIXTURE = os.path.join(FIXTURES, "gfocalv2_state_dicts.json")


def mmdet_state_dict_layout(model: str = "R-50 1x", fixture: str = FIXTURE):
    """
    [(key, shape, dtype)] of the state_dict MMDetection's GFL ``model`` saves (from the
    fixture).
    """
    with open(fixture) as f:
        models = json.load(f)["models"]
    return [
        (key, tuple(shape), getattr(torch, dtype))
        for key, shape, dtype in models[model]["state_dict"]
    ]


def mmdet_gfl_state_dict(
    model: str = "R-50 1x", seed: int = 0, fixture: str = FIXTURE
) -> "OrderedDict[str, torch.Tensor]":
    """
    A state dict with exactly the keys, shapes and dtypes MMDetection saves for
    ``model`` (see tests/fixtures), filled with random values of the right kind:
    He-scaled conv weights, BN statistics with positive variances, the integral
    buffer with its bins 0..n.
    """
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape, dtype in mmdet_state_dict_layout(model, fixture):
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(1000, dtype=dtype)
        elif key == "bbox_head.integral.project":
            value = torch.arange(shape[0], dtype=dtype)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("scale"):
            value = 1.0 + 0.2 * torch.rand(shape, generator=g)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            value = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith(
            ("bn1.weight", "bn2.weight", "bn3.weight", "gn.weight", "downsample.1.weight")
        ):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        else:  # biases, BN means
            value = 0.1 * torch.randn(shape, generator=g)
        sd[key] = value.to(dtype)
    return sd


def _bn_eval(sd, p, x):
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        training=False,
        eps=1e-5,
    )


@torch.no_grad()
def reference_forward(sd, x, depth=50, groups=1):
    """x: (N, 3, H, W) normalised images -> ([P3..P7], [cls per level], [reg per level])."""
    x = F.relu(
        _bn_eval(sd, "backbone.bn1", F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3))
    )
    x = F.max_pool2d(x, 3, 2, 1)
    stages = []
    for layer, n in enumerate(BLOCKS[depth], start=1):
        for b in range(n):
            p = f"backbone.layer{layer}.{b}"
            stride = 2 if (b == 0 and layer > 1) else 1
            out = F.relu(_bn_eval(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"])))
            out = F.relu(
                _bn_eval(
                    sd,
                    f"{p}.bn2",
                    F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1, groups=groups),
                )
            )
            out = _bn_eval(sd, f"{p}.bn3", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            identity = x
            if b == 0:
                identity = _bn_eval(
                    sd,
                    f"{p}.downsample.1",
                    F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride),
                )
            x = F.relu(out + identity)
        stages.append(x)
    c3, c4, c5 = stages[1:]
    lat = [
        F.conv2d(
            c, sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"]
        )
        for i, c in enumerate([c3, c4, c5])
    ]
    for i in (2, 1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [
        F.conv2d(
            lat[i],
            sd[f"neck.fpn_convs.{i}.conv.weight"],
            sd[f"neck.fpn_convs.{i}.conv.bias"],
            padding=1,
        )
        for i in range(3)
    ]
    outs.append(
        F.conv2d(
            outs[2],
            sd["neck.fpn_convs.3.conv.weight"],
            sd["neck.fpn_convs.3.conv.bias"],
            stride=2,
            padding=1,
        )
    )
    outs.append(
        F.conv2d(
            outs[3],
            sd["neck.fpn_convs.4.conv.weight"],
            sd["neck.fpn_convs.4.conv.bias"],
            stride=2,
            padding=1,
        )
    )
    cls_scores, bbox_preds = [], []
    for level, f in enumerate(outs):
        c, r = f, f
        for i in range(4):
            c = F.relu(
                F.group_norm(
                    F.conv2d(c, sd[f"bbox_head.cls_convs.{i}.conv.weight"], padding=1),
                    32,
                    sd[f"bbox_head.cls_convs.{i}.gn.weight"],
                    sd[f"bbox_head.cls_convs.{i}.gn.bias"],
                )
            )
            r = F.relu(
                F.group_norm(
                    F.conv2d(r, sd[f"bbox_head.reg_convs.{i}.conv.weight"], padding=1),
                    32,
                    sd[f"bbox_head.reg_convs.{i}.gn.weight"],
                    sd[f"bbox_head.reg_convs.{i}.gn.bias"],
                )
            )
        cls_scores.append(
            F.conv2d(c, sd["bbox_head.gfl_cls.weight"], sd["bbox_head.gfl_cls.bias"], padding=1)
        )
        reg = F.conv2d(r, sd["bbox_head.gfl_reg.weight"], sd["bbox_head.gfl_reg.bias"], padding=1)
        bbox_preds.append(reg * sd[f"bbox_head.scales.{level}.scale"])
    return outs, cls_scores, bbox_preds
