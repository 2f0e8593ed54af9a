"""
Weight EMA, as NanoDet-Plus trains with it: an exponential moving average of
every parameter and buffer of the model (BatchNorm statistics included),
updated after every optimizer step, with NanoDet's ramp of the decay
(``nanodet/model/weight_averager/ema.py``). :class:`WeightEMA` is a
detectron2 hook around torch's ``AveragedModel`` and ``get_ema_multi_avg_fn``;
the entry points evaluate its copy, and save it next to the trained weights
under :data:`EMA_KEY` (:func:`averaged_weights` reads it back as a model's
state dict).
"""

import logging
import math
from typing import Callable, Dict, List, Optional

import torch
from detectron2.engine import HookBase
from torch import Tensor

from .devices import unwrap

__all__ = ["WeightEMA", "ema_retention", "averaged_weights", "build_weight_ema", "EMA_KEY"]

logger = logging.getLogger(__name__)

# the checkpoint entry of the averaged model (the trained one stays under "model", for resuming)
EMA_KEY = "ema"
# AveragedModel's state dict: the copy under "module.", and its count of updates
_MODULE_PREFIX = "module."


def ema_retention(step: int, decay: float, warmup: float) -> float:
    """
    The share of the average kept at the ``step``-th update (1-based):
    ``decay · (1 − exp(−(step + 1) / warmup))``, NanoDet's ramp (its
    ``calculate_dacay`` gives the model's share, ``1 −`` this, with Lightning's
    ``global_step`` = ``step``); ``warmup=0``: ``decay`` from the start.
    """
    if warmup <= 0:
        return decay
    return decay * (1.0 - math.exp(-(step + 1) / warmup))


def _floats_averaged(ema_fn: Callable) -> Callable:
    """
    ``ema_fn`` (torch's ``get_ema_multi_avg_fn``) for the float groups of
    tensors only; the others (BatchNorm's step counter, a constant index such
    as ShuffleNetV2's channel order) become the model's values. torch's EMA
    computes an integer tensor's average in float and truncates it: an index
    of 5 averaged with itself can come back as 4.
    """

    def build(retention: float) -> Callable:
        average = ema_fn(retention)

        def update(averaged: List[Tensor], current: List[Tensor], n_averaged) -> None:
            # AveragedModel passes one device and dtype per call
            if averaged[0].is_floating_point() or averaged[0].is_complex():
                average(averaged, current, n_averaged)
            else:
                for a, c in zip(averaged, current):
                    a.copy_(c)

        return update

    return build


class WeightEMA(HookBase):
    """
    A moving average of ``model``'s parameters and buffers (the model inside a
    DDP wrapper: the one the optimizer updates, the same on every worker).
    Before training it copies the model, unless a resumed checkpoint restored
    it; after every step it moves towards the model by ``1 − ema_retention``.
    :attr:`model` is the averaged copy, to evaluate.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9998, warmup: float = 2000.0):
        """
        Args:
            model: the trained model (or its DDP wrapper).
            decay: the share of the average kept per update, once ramped up.
            warmup: time constant of NanoDet's ramp, in iterations (0: no ramp).
        """
        if not 0.0 <= decay <= 1.0 or warmup < 0:
            raise ValueError(f"need 0 <= decay <= 1 and warmup >= 0, got {decay}, {warmup}")
        try:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        except ImportError as e:  # torch < 2.1
            raise ImportError(f"weight EMA needs torch 2.1 or later: {e}") from e
        self._source = unwrap(model)
        self._ema_fn = _floats_averaged(get_ema_multi_avg_fn)
        self.decay, self.warmup = decay, warmup
        # use_buffers: NanoDet averages the BatchNorm statistics too
        self.averaged = AveragedModel(self._source, use_buffers=True)

    @property
    def model(self) -> torch.nn.Module:
        """The averaged copy of the model."""
        return self.averaged.module

    def updates(self) -> int:
        """Updates since the copy (0: not copied yet); a CPU tensor, read without a device sync."""
        return int(self.averaged.n_averaged)

    def update(self) -> None:
        """Copy the model (first call) or move the average towards it."""
        step = self.updates()
        self.averaged.multi_avg_fn = self._ema_fn(ema_retention(step, self.decay, self.warmup))
        self.averaged.update_parameters(self._source)

    def before_train(self):
        if self.updates() == 0:
            self.update()
            logger.info(f"Weight EMA: decay {self.decay}, ramp {self.warmup} iterations")
        else:
            logger.info(f"Weight EMA: resumed after {self.updates() - 1} updates")

    def after_step(self):
        self.update()


def build_weight_ema(settings: Optional[Dict], model: torch.nn.Module) -> Optional[WeightEMA]:
    """
    The :class:`WeightEMA` of ``model`` that ``settings`` (``enabled``,
    ``decay``, ``warmup``; a LazyConfig's ``train.ema``) ask for, or None.
    """
    if not settings or not settings.get("enabled", False):
        return None
    unknown = set(settings) - {"enabled", "decay", "warmup"}
    if unknown:
        raise ValueError(f"unknown weight EMA settings {sorted(unknown)}: enabled, decay, warmup")
    kwargs = {k: settings[k] for k in ("decay", "warmup") if k in settings}
    return WeightEMA(model, **kwargs)


def averaged_weights(state: Dict) -> Dict:
    """A saved :class:`WeightEMA` (its ``AveragedModel``'s state dict) as the model's state dict."""
    n = len(_MODULE_PREFIX)
    return {k[n:]: v for k, v in state.items() if k.startswith(_MODULE_PREFIX)}
