"""
The teacher of Localization Distillation, as the training entry points build
it: a GFL model from its config (LazyConfig ``.py`` or yacs ``.yaml``) with
every weight of its checkpoint, frozen, wrapped with the student in a
:class:`~gfl_d2.modeling.LocalizationDistiller`.

In a LazyConfig the distillation is a node beside ``model`` (the model is the
student alone, so that evaluation and export build nothing else)::

    distillation = dict(
        teacher=L(build_teacher)(config_file="...", checkpoint="..."),
        loss_weight=0.25,
        temperature=10.0,
    )

In a yacs config it is ``MODEL.GFL.LD`` (``TEACHER_CONFIG``, ``TEACHER_WEIGHTS``,
``TEACHER_OPTS``, ``LOSS_WEIGHT``, ``TEMPERATURE``).
"""

import logging
import os
from typing import Optional, Sequence

from torch import nn

from .modeling import LocalizationDistiller

__all__ = ["build_teacher", "distill", "distill_from_lazy_config", "distill_from_yacs_config"]

logger = logging.getLogger(__name__)


def _load_model_config(config_file: str, opts: Sequence[str]) -> nn.Module:
    """The ``model`` of a LazyConfig ``.py`` or a yacs ``.yaml`` (GFL's defaults added), built."""
    if config_file.endswith(".py"):
        from detectron2.config import instantiate

        from .lazy_config import load_lazy_config

        return instantiate(load_lazy_config(config_file, list(opts)).model)
    if config_file.endswith((".yaml", ".yml")):
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        from .config import add_gfl_config

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
    """
    A file, or a config of the project's named as in ``gfl_d2.model_zoo`` (``"Synthetic/..."``).
    """
    if os.path.isfile(config_file):
        return config_file
    from .model_zoo import get_config_file

    try:
        return get_config_file(config_file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"teacher config not found: {config_file} (neither a file nor one of gfl-d2's configs)"
        ) from None


def _check_checkpoint(checkpoint: str, config_file: str) -> None:
    if not checkpoint:
        raise ValueError("the teacher needs its checkpoint (its trained weights); none given")
    if "://" not in checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"teacher checkpoint not found: {checkpoint} (train the teacher first: "
            f"python tools/train_net.py --config-file {config_file})"
        )


def build_teacher(config_file: str, checkpoint: str, opts: Sequence[str] = ()) -> nn.Module:
    """
    The teacher of LD: the GFL model of ``config_file`` (LazyConfig ``.py`` or
    yacs ``.yaml``, a path or one of gfl-d2's configs such as
    ``"Synthetic/gfl_R_18_FPN_shapes.py"``; ``opts`` override it) with the
    weights of ``checkpoint`` (one trained here, or converted by
    ``tools/convert_mmdet_checkpoint.py``), in eval mode, without gradients.
    Every weight must load, and the checkpoint must hold no other: a teacher
    with missing or unexpected weights would teach noise.
    """
    from .checkpoint import CheckedCheckpointer

    config_file = _config_path(config_file)
    _check_checkpoint(checkpoint, config_file)
    model = _load_model_config(config_file, opts)
    checkpointer = CheckedCheckpointer(model, use_ema=True)  # a weight EMA, if it has one
    checkpointer.load(checkpoint, checkpointables=[])
    problems = checkpointer.load_problems()
    if problems:
        raise ValueError(
            f"the teacher checkpoint {checkpoint} does not fit the model of {config_file}: "
            + "; ".join(problems)
        )
    model.eval()
    model.requires_grad_(False)
    logger.info(f"LD teacher: {config_file} with {checkpoint}")
    return model


def distill(student: nn.Module, teacher: nn.Module, **settings) -> LocalizationDistiller:
    """``student`` taught by ``teacher`` (moved to the student's device); ``settings``:
    :class:`~gfl_d2.modeling.LocalizationDistiller`'s ``loss_weight`` and ``temperature``."""
    return LocalizationDistiller(student, teacher.to(student.device), **settings)


def distill_from_lazy_config(cfg, student: nn.Module) -> Optional[LocalizationDistiller]:
    """
    The distiller of a LazyConfig's ``distillation`` node around ``student``; None without one.
    """
    node = cfg.get("distillation", None) if hasattr(cfg, "get") else None
    if node is None:
        return None
    from detectron2.config import instantiate

    settings = {k: v for k, v in node.items() if k != "teacher"}
    return distill(student, instantiate(node.teacher), **settings)


def distill_from_yacs_config(cfg, student: nn.Module) -> Optional[LocalizationDistiller]:
    """
    The distiller of a yacs config's ``MODEL.GFL.LD`` around ``student``; None without a teacher.
    """
    ld = cfg.MODEL.GFL.LD
    if not ld.TEACHER_CONFIG:
        return None
    teacher = build_teacher(ld.TEACHER_CONFIG, ld.TEACHER_WEIGHTS, ld.TEACHER_OPTS)
    return distill(student, teacher, loss_weight=ld.LOSS_WEIGHT, temperature=ld.TEMPERATURE)
