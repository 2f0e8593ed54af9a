"""
Small models and inputs for tests, in the manner of
``detectron2.utils.testing``: a tiny GFL that runs in a second on a CPU,
synthetic images with their ground truth, and one training step. They need
nothing but the installed package (the repository's own test helpers, which
run its tools, are ``tests/repo.py``).
"""

import numpy as np
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from .modeling import (
    GFL,
    ATSSMatcher,
    DistributionBox2BoxTransform,
    GFLHead,
    LastLevelP6P7FromP5,
)


def _tiny_backbone(channels: int):
    """ResNet-18 with GroupNorm, FPN of ``channels`` on P3-P7."""
    return L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="GN"),
            stages=L(ResNet.make_default_stages)(depth=18, norm="GN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=0,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=channels,
        top_block=L(LastLevelP6P7FromP5)(in_channels=channels, out_channels=channels),
    )


def _box_transform(box_representation: str, reg_max: int):
    from .modeling import DiracBox2BoxTransform

    if box_representation == "distribution":
        return L(DistributionBox2BoxTransform)(reg_max=reg_max)
    if box_representation == "dirac":
        return L(DiracBox2BoxTransform)(anchor_scale=8.0)
    raise ValueError(
        f"box_representation must be 'distribution' or 'dirac', got {box_representation!r}"
    )


def tiny_gfl_config(
    num_classes=3,
    reg_max=16,
    channels=64,
    num_convs=1,
    quality="joint",
    box_representation="distribution",
):
    """
    A small ResNet-18/GN FPN GFL that runs quickly on CPU (P3-P7). ``quality``
    is the head's; ``box_representation`` chooses its box transform:
    "distribution" (n = ``reg_max``) or "dirac" (which has no distributions to
    output, so ``output_box_distributions`` is off).
    """
    return L(GFL)(
        backbone=_tiny_backbone(channels),
        head=L(GFLHead)(
            input_shape=[ShapeSpec(channels=channels)] * 5,
            num_classes="${..num_classes}",
            conv_dims=[channels] * num_convs,
            norm="GN",
            box2box_transform=_box_transform(box_representation, reg_max),
            quality=quality,
        ),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[64], [128], [256], [512], [1024]],
            aspect_ratios=[1.0],
            strides=[8, 16, 32, 64, 128],
            offset=0.0,
        ),
        anchor_matcher=L(ATSSMatcher)(topk=9),
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        num_classes=num_classes,
        output_box_distributions=box_representation == "distribution",
        size_divisibility=32,
        pixel_mean=[128.0, 128.0, 128.0],
        pixel_std=[64.0, 64.0, 64.0],
    )


def tiny_gfl(**kwargs):
    torch.manual_seed(0)
    return instantiate(tiny_gfl_config(**kwargs))


def make_instances(boxes, classes, image_size):
    inst = Instances(image_size)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    return inst


def shapes_image(boxes, classes, size=(128, 128), seed=0):
    """An image with one flat-coloured rectangle per box, colour by class."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.integers(0, 40, size=(3, h, w)).astype(np.float32)
    colours = [(230, 40, 40), (40, 230, 40), (40, 40, 230), (230, 230, 40)]
    for (x0, y0, x1, y1), c in zip(boxes, classes):
        img[:, int(y0) : int(y1), int(x0) : int(x1)] = np.array(colours[c], dtype=np.float32)[
            :, None, None
        ]
    return torch.from_numpy(img)


def two_bin_logits(targets, n_bins):
    """Logits whose softmax puts (i+1-y, y-i) on bins i, i+1 and ~0 elsewhere."""
    probs = torch.zeros(*targets.shape, n_bins)
    i = targets.floor().long()
    probs.scatter_(-1, i[..., None], (i + 1 - targets)[..., None])
    probs.scatter_add_(-1, (i + 1).clamp(max=n_bins - 1)[..., None], (targets - i)[..., None])
    return torch.where(probs > 0, probs.clamp(min=1e-30).log(), torch.tensor(-1e4))


# a two-image training batch: three boxes of classes 0-2, and one box
BOXES = [[10, 12, 60, 70], [70, 20, 120, 60], [30, 80, 52, 100]]
CLASSES = [0, 1, 2]


def two_image_batch(size=(128, 128)):
    return [
        {
            "image": shapes_image(BOXES, CLASSES, size=size, seed=0),
            "instances": make_instances(BOXES, CLASSES, size),
        },
        {
            "image": shapes_image(BOXES[:1], CLASSES[:1], size=size, seed=1),
            "instances": make_instances(BOXES[:1], CLASSES[:1], size),
        },
    ]


def train_step(model, data):
    """One forward/backward in training mode; returns (losses, the event storage)."""
    model.train()
    with EventStorage() as storage:
        losses = model(data)
        sum(losses.values()).backward()
    return losses, storage
