"""
Where the model runs: the device a config asks for, or the CPU where it is
absent, and detectron2's DDP wrapper made to work on the CPU (gloo).
"""

import logging

import torch
from detectron2.engine import defaults

__all__ = ["create_ddp_model", "resolve_device", "describe_device", "unwrap"]

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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (the model itself if none)."""
    return model.module if hasattr(model, "module") else model


def resolve_device(device: str) -> str:
    """``device`` if usable, else "cpu" with a warning (a CUDA config on a machine without GPU)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device={device!r} requested but CUDA is not available: running on CPU")
        return "cpu"
    return device


def describe_device(device: str) -> str:
    """One line for the log: which device runs, and what it is."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"running on {device}: {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    why = "" if torch.cuda.is_available() else " (no CUDA device available)"
    return f"running on {device}{why}, {torch.get_num_threads()} threads"
