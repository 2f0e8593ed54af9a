"""
The losses of Generalized Focal Loss (GFL V1, Li et al. 2020), as plain,
element-wise tensor functions. Reduction and normalisation are left to the
caller (the meta-architecture), as with fvcore's ``sigmoid_focal_loss``.

All three compute in float32 whatever the input dtype, so they are safe under
fp16/bf16 autocast: log-probabilities of confident predictions underflow in
half precision.
"""
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["quality_focal_loss", "distribution_focal_loss", "generalized_focal_loss"]


def generalized_focal_loss(
    log_p_left: Tensor,
    log_p_right: Tensor,
    y_left: Tensor,
    y_right: Tensor,
    y: Tensor,
    beta: float = 2.0,
) -> Tensor:
    """
    The general form (paper Eq. 7) for a continuous label ``y`` with
    ``y_left <= y <= y_right``, predicted by probabilities ``p_left``/``p_right``
    on the two neighbouring discrete values::

        GFL = -|y - (y_l p_l + y_r p_r)|^beta ((y_r - y) log p_l + (y - y_l) log p_r)

    It takes log-probabilities so that the caller can produce them stably
    (``logsigmoid``, ``log_softmax``). All arguments broadcast; the result has
    their broadcast shape. QFL is the case ``y_l=0, y_r=1, p_r=sigmoid``; DFL is
    ``beta=0`` with ``p`` the softmax over bins.
    """
    log_p_left, log_p_right = log_p_left.float(), log_p_right.float()
    y_left, y_right, y = (torch.as_tensor(t, device=log_p_left.device).float() for t in (y_left, y_right, y))
    ce = -((y_right - y) * log_p_left + (y - y_left) * log_p_right)
    if beta == 0:
        return ce
    expectation = y_left * log_p_left.exp() + y_right * log_p_right.exp()
    return (y - expectation).abs().pow(beta) * ce


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
