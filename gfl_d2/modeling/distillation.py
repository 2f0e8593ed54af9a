"""
Localization Distillation (LD; Zheng et al., "Localization Distillation for
Dense Object Detection", CVPR 2022): a frozen teacher GFL's edge
distributions train a student GFL on top of its own losses, at no inference
cost.

This module holds what concerns the teacher: building it from its config
and checkpoint (:func:`build_teacher`), checking that it can teach a given
student (:func:`check_teacher`: the same bins, anchors, levels and classes),
and running it on the student's batch (:func:`teacher_box_outputs`). The
loss is :func:`~gfl_d2.modeling.losses.localization_distillation_loss`; the
student (:class:`~gfl_d2.modeling.meta_arch.GFL` with ``teacher=``) keeps the
teacher outside its module tree, so that it is in no checkpoint, no optimizer
and no DDP gradient sync.
"""

import logging
import os
from typing import List, Sequence

import torch
from torch import Tensor, nn

__all__ = ["build_teacher", "check_teacher", "teacher_box_outputs"]

logger = logging.getLogger(__name__)


def _load_model_config(config_file: str, opts: Sequence[str]):
    """The ``model`` of a LazyConfig ``.py`` or a yacs ``.yaml`` (GFL's defaults added), built."""
    if config_file.endswith(".py"):
        from detectron2.config import instantiate

        from ..lazy_config import load_lazy_config

        return instantiate(load_lazy_config(config_file, list(opts)).model)
    if config_file.endswith((".yaml", ".yml")):
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        from ..config import add_gfl_config

        cfg = get_cfg()
        add_gfl_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = "cpu"  # moved with the student
        return build_model(cfg)
    raise ValueError(
        f"teacher config {config_file!r}: expected a LazyConfig .py or a yacs .yaml file"
    )


def _config_path(config_file: str) -> str:
    """A file, or a config of the project's named as in ``gfl_d2.model_zoo`` (``"Synthetic/..."``)."""
    if os.path.isfile(config_file):
        return config_file
    from ..model_zoo import get_config_file

    try:
        return get_config_file(config_file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"teacher config not found: {config_file} (neither a file nor one of gfl-d2's configs)"
        ) from None


def build_teacher(config_file: str, checkpoint: str, opts: Sequence[str] = ()) -> nn.Module:
    """
    The teacher of LD: the GFL model of ``config_file`` (LazyConfig ``.py`` or
    yacs ``.yaml``, a path or one of gfl-d2's configs such as
    ``"Synthetic/gfl_R_18_FPN_shapes.py"``; ``opts`` override it) with the weights of
    ``checkpoint`` (any checkpoint detectron2's ``DetectionCheckpointer``
    reads: one trained here, or converted from MMDetection or the authors'
    code by ``tools/convert_mmdet_checkpoint.py``), in eval mode, without
    gradients. Every weight must load: a teacher with missing or unexpected
    weights would teach noise.
    """
    from ..checkpoint import CheckedCheckpointer

    config_file = _config_path(config_file)
    if not checkpoint:
        raise ValueError("the teacher needs its checkpoint (its trained weights); none given")
    if "://" not in checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"teacher checkpoint not found: {checkpoint} (train the teacher first: "
            f"python tools/train_net.py --config-file {config_file})"
        )
    model = _load_model_config(config_file, opts)
    checkpointer = CheckedCheckpointer(model)
    checkpointer.load(checkpoint, checkpointables=[])
    incompatible = checkpointer._incompatible
    problems = []
    if incompatible.missing_keys:
        problems.append(f"missing weights: {', '.join(incompatible.missing_keys[:8])}")
    if incompatible.unexpected_keys:
        problems.append(
            f"weights the model does not have: {', '.join(incompatible.unexpected_keys[:8])}"
        )
    if incompatible.incorrect_shapes:
        problems.append(
            "weights of another shape: "
            + ", ".join(
                f"{k} {tuple(a)} in the checkpoint, {tuple(b)} in the model"
                for k, a, b in incompatible.incorrect_shapes[:8]
            )
        )
    if problems:
        raise ValueError(
            f"the teacher checkpoint {checkpoint} does not fit the model of {config_file}: "
            + "; ".join(problems)
        )
    model.eval()
    model.requires_grad_(False)
    logger.info(f"LD teacher: {config_file} with {checkpoint}")
    return model


def _strides(model: nn.Module) -> List[int]:
    shapes = model.backbone.output_shape()
    return [shapes[f].stride for f in model.head_in_features]


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """
    Refuse a teacher that cannot teach ``student`` by LD, naming both values:
    LD compares the two models' distributions over the same bins (n and Δ) at
    the same anchors (strides, levels, anchor scale), for the same classes.
    """
    name = type(teacher).__name__
    t_coding = getattr(teacher, "box2box_transform", None)
    if t_coding is None or not getattr(t_coding, "has_distributions", False):
        raise ValueError(
            f"the LD teacher must be a GFL model with edge distributions; got {name}"
            + ("" if t_coding is None else " with box_representation='dirac'")
        )
    s_coding = student.box2box_transform
    if not s_coding.has_distributions:
        raise ValueError("LD trains edge distributions: the student has box_representation='dirac'")
    pairs = [
        ("n (reg_max: bins 0..n of each edge)", s_coding.reg_max, t_coding.reg_max),
        ("bin_width (Δ)", s_coding.bin_width, t_coding.bin_width),
        ("anchor_scale", s_coding.anchor_scale, t_coding.anchor_scale),
        ("strides of the head's levels", _strides(student), _strides(teacher)),
        ("num_classes", student.num_classes, teacher.num_classes),
    ]
    for what, s_value, t_value in pairs:
        if s_value != t_value:
            raise ValueError(
                f"LD needs the same {what} in student and teacher: student {s_value}, teacher {t_value}"
            )


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.to(b.device), b))


@torch.no_grad()
def teacher_box_outputs(teacher: nn.Module, images: Tensor, student: nn.Module) -> List[Tensor]:
    """
    The teacher's box outputs on the student's batch.

    Args:
        teacher: a model that passed :func:`check_teacher`.
        images: (N, 3, H, W) the student's normalised, padded batch; the teacher
            sees the same pixels in its own normalisation and channel order.
        student: the student, for its normalisation and input format.

    Returns:
        per level, (N, R_l, 4(n+1)) the teacher's edge-distribution logits, in
        the layout of the student's ``_transpose_dense_predictions``.
    """
    x = images
    same_norm = _same(student.pixel_mean, teacher.pixel_mean) and _same(
        student.pixel_std, teacher.pixel_std
    )
    same_order = student.input_format == teacher.input_format
    if not (same_norm and same_order):
        x = x * student.pixel_std + student.pixel_mean
        if not same_order:
            x = x.flip(1)  # RGB <-> BGR
        x = (x - teacher.pixel_mean.to(x.dtype)) / teacher.pixel_std.to(x.dtype)
    features = teacher.backbone(x)
    predictions = teacher.head([features[f] for f in teacher.head_in_features])
    transposed = teacher._transpose_dense_predictions(predictions, teacher._prediction_channels)
    return transposed[1]
