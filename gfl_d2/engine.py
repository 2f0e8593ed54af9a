"""Small additions to detectron2's engine used by the entry points."""
import logging

import torch
from detectron2.engine import defaults

__all__ = ["create_ddp_model", "resolve_device"]

logger = logging.getLogger(__name__)

# bound at import, so that this wrapper may also be installed in place of detectron2's
_d2_create_ddp_model = defaults.create_ddp_model


def create_ddp_model(model: torch.nn.Module, **kwargs):
    """
    detectron2's ``create_ddp_model``, which also works for a model on the CPU
    (multi-process training with gloo): there DDP must not be given device ids.
    """
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


def resolve_device(device: str) -> str:
    """``device`` if usable, else "cpu" with a warning (a CUDA config on a machine without GPU)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device={device!r} requested but CUDA is not available: running on CPU")
        return "cpu"
    return device
