"""
Loading a LazyConfig the way the entry points do: command-line overrides of
keys that do not exist and mandatory values (``???``) left unset are refused
with what to type instead, and the datasets a config builds (a dataset
folder, the number of its classes) are prepared before anything trains.
"""

import difflib
import inspect
import logging
import os
from typing import Dict, Optional, Sequence

from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig

from .errors import ConfigError

__all__ = [
    "load_lazy_config",
    "check_overrides",
    "check_mandatory",
    "refuse_missing_values",
    "resolve_num_classes",
    "prepare_datasets",
]

logger = logging.getLogger(__name__)


def _allowed_keys(node) -> Optional[set]:
    """
    Keys settable on a config node: its own, plus the parameters of a LazyCall target (None:
    any).
    """
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
                hint = (
                    f"; did you mean {', '.join(repr('.'.join(parts[:i] + [c])) for c in close)}?"
                    if close
                    else ""
                )
                raise KeyError(f"config key {key!r} does not exist: {where} has no {part!r}{hint}")
            raise KeyError(
                f"config key {key!r} does not exist: {'.'.join(parts[:i])} is not a mapping"
            )


def load_lazy_config(path: str, overrides: Sequence[str] = (), resolve: bool = True):
    """
    ``LazyConfig.load`` + ``apply_overrides``, refusing (:class:`ConfigError`
    with the reason) a missing file, an override of a key that does not exist or a
    mandatory value left unset; with ``resolve``, a dataset's number of
    classes is filled in (:func:`resolve_num_classes`).
    """
    from detectron2.config import LazyConfig

    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    cfg = LazyConfig.load(path)
    try:
        check_overrides(cfg, overrides)
    except (KeyError, ValueError) as e:
        raise ConfigError(e.args[0]) from None
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    check_mandatory(cfg, path)
    if resolve:
        resolve_num_classes(cfg)
    return cfg


# what to say when a config's mandatory ("???") value is not given
_MANDATORY_HINTS = {
    "dataset.root": (
        "the folder of your dataset (COCO, Pascal VOC or YOLO layout): dataset.root=/path/to/data"
    ),
    "train.init_checkpoint": "the weights to start from: train.init_checkpoint=/path/to/model.pth",
}


def check_mandatory(cfg, path: str = "the config") -> None:
    """:class:`ConfigError` naming every mandatory value (``???``) left unset, and how to set it."""
    from omegaconf import OmegaConf

    # unresolved, so that an interpolation of a missing value is not itself an error
    refuse_missing_values(
        OmegaConf.to_container(cfg, resolve=False), path, _MANDATORY_HINTS, "{key}=..."
    )


def refuse_missing_values(tree, path: str, hints: Dict[str, str], form: str) -> None:
    """
    :class:`ConfigError` naming every ``"???"`` in the nested dicts and lists ``tree``
    (a LazyConfig as a container, a yacs ``CfgNode``), each with its hint from
    ``hints`` or ``form`` (``"{key}=..."``) filled in.
    """

    def walk(node, prefix):
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        for k, v in items:
            key = f"{prefix}{k}"
            if v == "???":
                yield key
            else:
                yield from walk(v, key + ".")

    missing = sorted(walk(tree, ""))
    if missing:
        lines = "\n  ".join(f"{k}: {hints.get(k, 'add ' + form.format(key=k))}" for k in missing)
        raise ConfigError(f"{path} needs a value for {', '.join(missing)}:\n  {lines}")


def _is_lazy_call(node) -> bool:
    return isinstance(node, DictConfig) and "_target_" in node


def prepare_datasets(cfg) -> None:
    """
    Register the datasets of ``dataloader.train`` / ``dataloader.test`` now
    (a ``names`` LazyCall becomes the name it returns), so that a broken
    dataset stops the run before training, with every problem named.
    """
    from detectron2.config import instantiate

    loaders = cfg.get("dataloader") if hasattr(cfg, "get") else None
    for split in ("train", "test"):
        dataset = (
            loaders.get(split, {}).get("dataset", None) if isinstance(loaders, DictConfig) else None
        )
        names = dataset.get("names", None) if isinstance(dataset, DictConfig) else None
        if _is_lazy_call(names):
            dataset.names = instantiate(names)  # a broken dataset raises DatasetError


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

    num_classes = int(instantiate(node))  # a broken dataset raises DatasetError
    cfg.model.num_classes = num_classes
    root = node.get("root", None)
    logger.info(
        f"model.num_classes = {num_classes}"
        + (f", the classes of the dataset in {root}" if root else "")
    )
