"""
Localization Distillation (LD; Zheng et al., "Localization Distillation for
Dense Object Detection", CVPR 2022): a frozen teacher GFL's edge
distributions train a student GFL on top of its own losses, at no inference
cost.

Distillation is a composition at training time: :class:`LocalizationDistiller`
holds the student and the teacher and is what the trainer runs; the student
alone is what is checkpointed, optimised, evaluated and exported. Building the
teacher from its config and checkpoint is the entry points' business
(:func:`gfl_d2.teacher.build_teacher`).
"""

from typing import Dict, List

import torch
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from torch import Tensor, nn

from .losses import LocalizationTargets

__all__ = ["LocalizationDistiller", "check_teacher"]


def _strides(model: nn.Module) -> List[int]:
    shapes = model.backbone.output_shape()
    return [shapes[f].stride for f in model.head_in_features]


def _anchor_sizes(model: nn.Module) -> List[List[float]]:
    return [a.tolist() for a in model.anchor_generator.cell_anchors]


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """
    Refuse a teacher that cannot teach ``student`` by LD, naming both values:
    LD compares the two models' distributions over the same bins (n and Δ) at
    the same anchors (strides, levels, anchor boxes), for the same classes.
    """
    t_coding = getattr(teacher, "box2box_transform", None)
    if t_coding is None or not t_coding.has_distributions:
        raise ValueError(
            f"the LD teacher must be a GFL model with edge distributions; got "
            f"{type(teacher).__name__}" + ("" if t_coding is None else f" with {t_coding}")
        )
    s_coding = student.box2box_transform
    if not s_coding.has_distributions:
        raise ValueError(f"LD trains edge distributions: the student has {s_coding}")
    pairs = [
        ("n (reg_max: bins 0..n of each edge)", s_coding.reg_max, t_coding.reg_max),
        ("bin_width (Δ)", s_coding.bin_width, t_coding.bin_width),
        ("strides of the head's levels", _strides(student), _strides(teacher)),
        ("anchors (cell anchors per level)", _anchor_sizes(student), _anchor_sizes(teacher)),
        ("num_classes", student.num_classes, teacher.num_classes),
    ]
    for what, s_value, t_value in pairs:
        if s_value != t_value:
            raise ValueError(
                f"LD needs the same {what} in student and teacher: "
                f"student {s_value}, teacher {t_value}"
            )


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a.to(b.device), b))


class LocalizationDistiller(nn.Module):
    """
    A student GFL trained with Localization Distillation from a frozen teacher.

    In training, ``forward(batched_inputs)`` returns the student's losses plus
    ``loss_ld``: the KL divergence from the teacher's softened edge
    distributions at the student's positives, weighted per positive as the
    student's box losses are (MMDetection's ``LDHead``). In evaluation it is the
    student. The teacher is frozen (no gradients, always in eval mode), so
    DDP's reducer, which synchronises the gradients of trainable parameters,
    never touches it; the entry points give the optimizer and the checkpointer
    ``distiller.student`` alone, so that every checkpoint is a plain GFL's.

    Args:
        student: the GFL model to train.
        teacher: a trained GFL with the same bins, anchors, levels and classes
            (checked by :func:`check_teacher`).
        loss_weight: weight of ``loss_ld`` (0.25).
        temperature: T of the softened distributions (10).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss_weight: float = 0.25,
        temperature: float = 10.0,
    ):
        super().__init__()
        check_teacher(student, teacher)
        self.student, self.teacher = student, teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.loss_weight, self.temperature = loss_weight, temperature

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: batch statistics and dropout never change it
        return self

    @property
    def device(self) -> torch.device:
        return self.student.device

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        if not self.training:
            return self.student(batched_inputs)
        student = self.student
        images = student.preprocess_image(batched_inputs)
        features = student.backbone(images.tensor)
        features = [features[f] for f in student.head_in_features]
        predictions = student.head(features)
        gt_instances = [x["instances"].to(student.device) for x in batched_inputs]
        targets = LocalizationTargets(
            self.teacher_box_outputs(images.tensor), self.loss_weight, self.temperature
        )
        return student.forward_training(images, features, predictions, gt_instances, targets)

    @torch.no_grad()
    def teacher_box_outputs(self, images: Tensor) -> List[Tensor]:
        """
        Args:
            images: (N, 3, H, W) the student's normalised, padded batch; the
                teacher sees the same pixels in its own normalisation and
                channel order.

        Returns:
            per level, (N, R_l, 4(n+1)) the teacher's edge-distribution logits,
            anchors in the order of the student's.
        """
        student, teacher = self.student, self.teacher
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
        _, box_regs, *_ = teacher.head([features[f] for f in teacher.head_in_features])
        channels = teacher.box2box_transform.num_outputs
        return [permute_to_N_HWA_K(r, channels) for r in box_regs]
