"""Small additions to detectron2's engine used by the entry points."""
import argparse
import difflib
import inspect
import logging
import math
import os
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig, ListConfig

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import defaults, train_loop
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping
from detectron2.utils.registry import locate

from .model_zoo import DEFAULT_CONFIG  # noqa: F401  (re-exported: the entry points' default)

__all__ = [
    "DEFAULT_CONFIG",
    "config_argument_parser",
    "parse_with_overrides",
    "setup_config",
    "load_lazy_config",
    "create_ddp_model",
    "resolve_device",
    "describe_device",
    "check_overrides",
    "check_mandatory",
    "resolve_num_classes",
    "prepare_datasets",
    "CheckedCheckpointer",
    "clip_gradients",
    "SimpleTrainer",
    "AMPTrainer",
]

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


def describe_device(device: str) -> str:
    """One line for the log: which device runs, and what it is."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"running on {device}: {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    why = "" if torch.cuda.is_available() else " (no CUDA device available)"
    return f"running on {device}{why}, {torch.get_num_threads()} threads"


def _allowed_keys(node) -> Optional[set]:
    """Keys settable on a config node: its own, plus the parameters of a LazyCall target (None: any)."""
    keys = set(node.keys())
    target = node.get("_target_") if hasattr(node, "get") else None
    if target is None:
        return keys
    if isinstance(target, str):
        try:
            target = locate(target)
        except Exception:
            return keys
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return keys
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return keys | {p.name for p in params}


def check_overrides(cfg, overrides: Sequence[str]) -> None:
    """
    Refuse command-line overrides (``a.b.c=value``) that name a config key
    which does not exist, instead of silently adding it. Hydra's ``+key=value``
    (add) and ``~key`` (delete) are left alone. Arguments of a LazyCall's
    target that the config leaves at their default are accepted.
    """
    for item in overrides:
        if item.startswith(("+", "~")):
            continue
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        node = cfg
        parts = key.split(".")
        for i, part in enumerate(parts):
            if isinstance(node, (ListConfig, list)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if isinstance(node, (DictConfig, dict)):
                if part in node:
                    node = node[part]
                    continue
                allowed = _allowed_keys(node)
                if allowed is None or (part in allowed and i == len(parts) - 1):
                    break
                where = ".".join(parts[:i]) or "the config"
                close = difflib.get_close_matches(part, sorted(allowed), n=3)
                hint = f"; did you mean {', '.join(repr('.'.join(parts[:i] + [c])) for c in close)}?" if close else ""
                raise KeyError(f"config key {key!r} does not exist: {where} has no {part!r}{hint}")
            raise KeyError(f"config key {key!r} does not exist: {'.'.join(parts[:i])} is not a mapping")


class CheckedCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` that refuses, with a clear message, a file it
    cannot read (truncated, not a checkpoint) and a checkpoint of which not a
    single tensor fits the model (another architecture). A checkpoint that fits
    part of the model (an ImageNet backbone, another detector's backbone) loads
    as usual, with detectron2's report of what was not loaded.
    """

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:
            raise RuntimeError(
                f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}. "
                "Is the file complete (not truncated) and a PyTorch / detectron2 checkpoint?"
            ) from e

    def _load_model(self, checkpoint):
        model_state = checkpoint.get("model")
        if not isinstance(model_state, dict) or not model_state:
            raise RuntimeError("The checkpoint holds no model weights (no 'model' state dict)")
        not_tensors = [k for k, v in model_state.items() if not hasattr(v, "shape")]
        if not_tensors:
            raise RuntimeError(
                f"The checkpoint holds no model weights: its entries {not_tensors[:3]} are not tensors"
            )
        incompatible = super()._load_model(checkpoint)
        self._log_reinitialised(incompatible.incorrect_shapes)
        expected = set(self.model.state_dict().keys())
        not_loaded = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        if expected and not (expected - not_loaded):
            sample = sorted(model_state)[:3]
            raise RuntimeError(
                f"None of the checkpoint's {len(model_state)} tensors fits this {type(_unwrap(self.model)).__name__} "
                f"model (checkpoint keys look like {sample}): it is a checkpoint of another architecture"
            )
        return incompatible


    def _log_reinitialised(self, incorrect_shapes) -> None:
        """Say which tensors keep their fresh initialisation (shape differs from the checkpoint's), and why."""
        if not incorrect_shapes:
            return
        state = _unwrap(self.model).state_dict()
        lines = []
        for key, shape_ckpt, shape_model in incorrect_shapes:
            why = "its shape differs"
            if key.endswith("cls_score.weight") or key.endswith("cls_score.bias"):
                why = (f"the classification layer: the checkpoint has {shape_ckpt[0]} classes, the model "
                       f"{shape_model[0]} (fine-tuning on another dataset)")
                plain = key[len("module."):] if key.startswith("module.") else key
                if key.endswith("bias") and plain in state and state[plain].numel():
                    prior = torch.sigmoid(state[plain].float()).mean().item()
                    why += f"; bias at the prior probability {prior:.3g}"
            lines.append(f"{key}: {tuple(shape_ckpt)} in the checkpoint, {tuple(shape_model)} in the model: {why}")
        logger.warning(
            f"Re-initialised {len(lines)} tensor(s) instead of loading them (they keep the model's own "
            "initialisation):\n  " + "\n  ".join(lines)
        )


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def clip_gradients(optimizer: torch.optim.Optimizer, clip_type: str = "norm", clip_value: float = 35.0,
                   norm_type: float = 2.0) -> torch.optim.Optimizer:
    """
    Make ``optimizer`` clip the gradients of all its parameters before each
    step: by global norm (``clip_type="norm"``) or by value (``"value"``), with
    detectron2's optimizer wrapper.
    """
    if clip_type == "norm":
        def clipper(params):
            torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type)
    elif clip_type == "value":
        def clipper(params):
            torch.nn.utils.clip_grad_value_(params, clip_value)
    else:
        raise ValueError(f"clip_type must be 'norm' or 'value', got {clip_type!r}")
    cls = _generate_optimizer_class_with_gradient_clipping(type(optimizer), global_clipper=clipper)
    optimizer.__class__ = cls
    return optimizer


class _NameNonFiniteLosses:
    """On detectron2's non-finite-loss error, also name the terms that are not finite."""

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        try:
            super()._write_metrics(loss_dict, data_time, prefix, iter)
        except FloatingPointError as e:
            bad = [k for k, v in loss_dict.items() if not math.isfinite(float(v.detach() if hasattr(v, "detach") else v))]
            where = ", ".join(bad) if bad else "none on this worker (another worker's)"
            raise FloatingPointError(f"{e}\nnon-finite loss terms: {where}") from None


class SimpleTrainer(_NameNonFiniteLosses, train_loop.SimpleTrainer):
    """detectron2's ``SimpleTrainer`` naming the non-finite loss terms when it stops on one."""


class AMPTrainer(_NameNonFiniteLosses, train_loop.AMPTrainer):
    """detectron2's ``AMPTrainer`` naming the non-finite loss terms when it stops on one."""


def load_lazy_config(path: str, overrides: Sequence[str] = (), resolve: bool = True):
    """
    ``LazyConfig.load`` + ``apply_overrides``, refusing (SystemExit with the
    reason) a missing file, an override of a key that does not exist or a
    mandatory value left unset; with ``resolve``, a dataset's number of
    classes is filled in (:func:`resolve_num_classes`).
    """
    from detectron2.config import LazyConfig

    if not os.path.isfile(path):
        raise SystemExit(f"config file not found: {path}")
    cfg = LazyConfig.load(path)
    try:
        check_overrides(cfg, overrides)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {e.args[0]}")
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    check_mandatory(cfg, path)
    if resolve:
        resolve_num_classes(cfg)
    return cfg


# what to say when a config's mandatory ("???") value is not given
_MANDATORY_HINTS = {
    "dataset.root": "the folder of your dataset (COCO, Pascal VOC or YOLO layout): dataset.root=/path/to/data",
    "train.init_checkpoint": "the weights to start from: train.init_checkpoint=/path/to/model.pth",
}


def check_mandatory(cfg, path: str = "the config") -> None:
    """SystemExit naming every mandatory value (``???``) the config leaves unset, and how to set it."""
    from omegaconf import OmegaConf

    def walk(node, prefix):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            key = f"{prefix}{k}"
            if v == "???":
                yield key
            else:
                yield from walk(v, key + ".")

    # unresolved, so that an interpolation of a missing value is not itself an error
    missing = sorted(walk(OmegaConf.to_container(cfg, resolve=False), ""))
    if missing:
        lines = "\n  ".join(f"{k}: {_MANDATORY_HINTS.get(k, f'add {k}=...')}" for k in missing)
        raise SystemExit(f"error: {path} needs a value for {', '.join(missing)}:\n  {lines}")


def _is_lazy_call(node) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def prepare_datasets(cfg) -> None:
    """
    Register the datasets of ``dataloader.train`` / ``dataloader.test`` now
    (a ``names`` LazyCall becomes the name it returns), so that a broken
    dataset stops the run before training, with every problem named.
    """
    from detectron2.config import instantiate

    from .data import DatasetError

    loaders = cfg.get("dataloader") if hasattr(cfg, "get") else None
    for split in ("train", "test"):
        dataset = loaders.get(split, {}).get("dataset", None) if isinstance(loaders, DictConfig) else None
        names = dataset.get("names", None) if isinstance(dataset, DictConfig) else None
        if _is_lazy_call(names):
            try:
                dataset.names = instantiate(names)
            except DatasetError as e:
                raise SystemExit(f"error: {e}")


def resolve_num_classes(cfg) -> None:
    """
    A ``model.num_classes`` that is a LazyCall (``configs/OwnData``: the
    number of classes of the dataset) becomes the number, once, so that the
    head, the checks and the saved config see it; the log says where it came from.
    """
    model = cfg.get("model") if hasattr(cfg, "get") else None
    node = model.get("num_classes") if isinstance(model, DictConfig) else None
    if not _is_lazy_call(node):
        return
    from detectron2.config import instantiate

    try:
        num_classes = int(instantiate(node))
    except Exception as e:
        from .data import DatasetError

        if isinstance(e, DatasetError):
            raise SystemExit(f"error: {e}")
        raise
    cfg.model.num_classes = num_classes
    root = node.get("root", None)
    logger.info(f"model.num_classes = {num_classes}" + (f", the classes of the dataset in {root}" if root else ""))


def config_argument_parser(description: str, config_required: bool = False) -> argparse.ArgumentParser:
    """A tool's argument parser with ``--config-file`` (default: the embedded config); see :func:`parse_with_overrides`."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config_required:
        p.add_argument("--config-file", required=True, metavar="FILE")
    else:
        p.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    return p


def parse_with_overrides(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, with trailing ``key=value`` config overrides collected in ``args.opts``."""
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace):
    """detectron2's logger, and the LazyConfig of ``args.config_file`` with ``args.opts`` applied (checked)."""
    from detectron2.utils.logger import setup_logger

    setup_logger(name="detectron2")
    setup_logger(name="gfl_d2")
    return load_lazy_config(args.config_file, args.opts)
