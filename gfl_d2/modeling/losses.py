"""
The losses of Generalized Focal Loss (GFL V1, Li et al. 2020, and the
probability-space QFL of its follow-up V2, Li et al. 2021) and the KL
divergence of Localization Distillation (Zheng et al. 2022), as plain,
element-wise tensor functions. Reduction and normalisation are left to the
caller (the meta-architecture), as with fvcore's ``sigmoid_focal_loss``.

All of them compute in float32 whatever the input dtype, so they are safe under
fp16/bf16 autocast: log-probabilities of confident predictions underflow in
half precision.
"""

from typing import List, NamedTuple, Optional

import torch
import torch.distributed as dist
from detectron2.utils import comm
from fvcore.nn import sigmoid_focal_loss as _fvcore_sigmoid_focal_loss
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "quality_focal_loss",
    "fused_quality_focal_loss",
    "distribution_focal_loss",
    "localization_distillation_loss",
    "sigmoid_focal_loss",
    "dense_class_targets",
    "reduce_mean",
    "LocalizationTargets",
]


class LocalizationTargets(NamedTuple):
    """What Localization Distillation gives a student's losses: a teacher's box outputs."""

    box_regs: List[Tensor]  # per level, (N, R_l, 4(n+1)) the teacher's edge-distribution logits
    weight: float  # of loss_ld
    temperature: float  # T of the softened distributions


def reduce_mean(tensor: Tensor) -> Tensor:
    """Average a loss normaliser over all workers (a no-op in a single process)."""
    world_size = comm.get_world_size()
    if world_size == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / world_size


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0) -> Tensor:
    """
    Quality Focal Loss (paper Eq. 5), dense over all classes.

    Args:
        logits: (..., C) classification logits.
        targets: (..., C) soft targets in [0, 1]: the IoU of the predicted box
            with its ground truth at the ground-truth class of a positive
            location, 0 everywhere else.
        beta: modulating exponent; ``beta=0`` with 0/1 targets is plain BCE.

    Returns:
        (..., C) float32 element-wise loss
        ``|y - sigmoid(x)|^beta * BCE(sigmoid(x), y)``.
    """
    logits, targets = logits.float(), targets.float()
    # logits form of BCE: stable for any |x|
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if beta == 0:
        return bce
    return (targets - logits.sigmoid()).abs().pow(beta) * bce


# the floor of binary_cross_entropy's logs, as in torch.nn.functional.binary_cross_entropy
LOG_FLOOR = -100.0


def fused_quality_focal_loss(
    cls_logits: Tensor, quality_logits: Tensor, targets: Tensor, beta: float = 2.0
) -> Tensor:
    """
    Quality Focal Loss on the probability ``p = sigmoid(cls) * sigmoid(quality)``
    (GFL V2's score: the classification probability times the
    distribution-guided quality), dense over all classes.

    The loss is ``|y - p|^beta * BCE(p, y)``, binary cross-entropy on the
    probability with its logs floored at -100 as PyTorch's
    ``binary_cross_entropy`` does. Both logs are computed from the logits in
    log space, so that neither ``log p`` nor ``log (1 - p)`` loses precision
    where ``p`` is near 0 or 1 and no gradient becomes infinite:
    ``log p = logsig(a) + logsig(b)`` and, since ``1 - p = sig(-a) + sig(a) sig(-b)``,
    ``log (1 - p) = logaddexp(logsig(-a), logsig(a) + logsig(-b))``.

    Args:
        cls_logits: (..., C) classification logits ``a``.
        quality_logits: (..., 1) logits ``b`` of the quality (one per location,
            shared by the classes), or (..., C).
        targets: (..., C) soft targets in [0, 1], as for :func:`quality_focal_loss`.
        beta: modulating exponent.

    Returns:
        (..., C) float32 element-wise loss.
    """
    a, b, targets = cls_logits.float(), quality_logits.float(), targets.float()
    log_sig_a, log_sig_b = F.logsigmoid(a), F.logsigmoid(b)
    log_p = log_sig_a + log_sig_b
    log_one_minus_p = torch.logaddexp(F.logsigmoid(-a), log_sig_a + F.logsigmoid(-b))
    bce = -(
        targets * log_p.clamp(min=LOG_FLOOR)
        + (1.0 - targets) * log_one_minus_p.clamp(min=LOG_FLOOR)
    )
    if beta == 0:
        return bce
    return (targets - log_p.exp()).abs().pow(beta) * bce


def distribution_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """
    Distribution Focal Loss (paper Eq. 6).

    Args:
        logits: (..., n+1) logits of a distribution over the bins 0..n.
        targets: (...) continuous targets in bin units, in [0, n) (encode with
            the clamp to ``n - 0.1``; see ``box_coding``).

    Returns:
        (...) float32 loss ``-((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})``
        with ``y_i = floor(y)``.
    """
    targets = targets.float()
    left = targets.floor().long()
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_p_left = log_probs.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    log_p_right = log_probs.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    weight_left = (left + 1).float() - targets
    return -(weight_left * log_p_left + (1.0 - weight_left) * log_p_right)


def localization_distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 10.0
) -> Tensor:
    """
    Localization Distillation (Zheng et al., CVPR 2022): the KL divergence
    from a teacher's edge distribution to the student's, both softened by the
    temperature, as MMDetection 3.3's ``KnowledgeDistillationKLDivLoss``
    computes it (the mean over the bins, times ``T^2``).

    Args:
        student_logits: (..., n+1) the student's logits of one edge's distribution.
        teacher_logits: (..., n+1) the teacher's, over the same bins; never
            differentiated.
        temperature: T, which softens both distributions (``softmax(logits / T)``).

    Returns:
        (...) float32 ``T^2 * mean_i p_i (log p_i - log q_i)`` with p the
        teacher's softened distribution and q the student's.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    target = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(log_q, target, reduction="none").mean(dim=-1) * temperature**2


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """
    Focal Loss on hard (0/1) targets, fvcore's, computed in float32.

    Args:
        logits, targets: (..., C).

    Returns:
        (..., C) float32 element-wise loss.
    """
    return _fvcore_sigmoid_focal_loss(
        logits.float(), targets.float(), alpha=alpha, gamma=gamma, reduction="none"
    )


def dense_class_targets(
    gt_labels: Tensor, num_classes: int, quality: Optional[Tensor] = None
) -> Tensor:
    """
    Classification targets of a dense detector.

    Args:
        gt_labels: (N, R) long: the class of each anchor's matched box,
            ``num_classes`` for background, -1 for ignored anchors.
        num_classes: C.
        quality: (P,) soft targets of the P positive anchors, in the order of
            ``((gt_labels >= 0) & (gt_labels != C)).nonzero()``; ``None`` for
            hard (1.0) targets.

    Returns:
        (N, R, C) float32: the quality (or 1) at each positive anchor's class,
        0 elsewhere (including ignored anchors: mask them out of the loss).
    """
    pos_img, pos_anchor = ((gt_labels >= 0) & (gt_labels != num_classes)).nonzero(as_tuple=True)
    targets = torch.zeros(
        (*gt_labels.shape, num_classes), dtype=torch.float32, device=gt_labels.device
    )
    value = 1.0 if quality is None else quality.float()
    targets[pos_img, pos_anchor, gt_labels[pos_img, pos_anchor]] = value
    return targets
