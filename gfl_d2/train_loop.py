"""
detectron2's trainers, naming the loss terms that are not finite when they
stop on one, and gradient clipping for an optimizer built from a LazyConfig.
"""

import math

import torch
from detectron2.engine import train_loop

__all__ = ["SimpleTrainer", "AMPTrainer", "clip_gradients"]


class _NameNonFiniteLosses:
    """On detectron2's non-finite-loss error, also name the terms that are not finite."""

    # detectron2's protected step (gfl_d2.detectron2_internals): no public hook sees loss_dict
    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        try:
            super()._write_metrics(loss_dict, data_time, prefix, iter)
        except FloatingPointError as e:
            bad = [
                k
                for k, v in loss_dict.items()
                if not math.isfinite(float(v.detach() if hasattr(v, "detach") else v))
            ]
            where = ", ".join(bad) if bad else "none on this worker (another worker's)"
            raise FloatingPointError(f"{e}\nnon-finite loss terms: {where}") from None


class SimpleTrainer(_NameNonFiniteLosses, train_loop.SimpleTrainer):
    """detectron2's ``SimpleTrainer`` naming the non-finite loss terms when it stops on one."""


class AMPTrainer(_NameNonFiniteLosses, train_loop.AMPTrainer):
    """detectron2's ``AMPTrainer`` naming the non-finite loss terms when it stops on one."""


def clip_gradients(
    optimizer: torch.optim.Optimizer,
    clip_type: str = "norm",
    clip_value: float = 35.0,
    norm_type: float = 2.0,
) -> torch.optim.Optimizer:
    """
    Make ``optimizer`` clip the gradients of all its parameters before each
    step: by global norm (``clip_type="norm"``) or by value (``"value"``), with
    torch's public ``Optimizer.register_step_pre_hook``.
    """
    if clip_type not in ("norm", "value"):
        raise ValueError(f"clip_type must be 'norm' or 'value', got {clip_type!r}")

    def clip(opt, args, kwargs):
        params = [p for group in opt.param_groups for p in group["params"]]
        if clip_type == "norm":
            torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type)
        else:
            torch.nn.utils.clip_grad_value_(params, clip_value)

    optimizer.register_step_pre_hook(clip)
    return optimizer
