"""
detectron2's checkpointer, made to say what it could not load and why, and
the checks built on that: weights that evaluate a detector must hold its
head; fine-tuning from a checkpoint keeps that checkpoint's box layer.
"""

import logging
import os
from typing import List
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .devices import unwrap

__all__ = [
    "CheckedCheckpointer",
    "refuse_untrained_evaluation",
    "require_trained_head",
    "holds_layer",
]

logger = logging.getLogger(__name__)


class CheckedCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` that refuses, with a clear message, a file it
    cannot read (truncated, not a checkpoint) and a checkpoint of which not a
    single tensor fits the model (another architecture). A checkpoint that fits
    part of the model (an ImageNet backbone, another detector's backbone) loads
    as usual, with detectron2's report of what was not loaded, which
    :meth:`not_loaded` returns.
    """

    _incompatible = None

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
        self._incompatible = incompatible
        self._log_reinitialised(incompatible.incorrect_shapes)
        expected = set(self.model.state_dict().keys())
        if expected and not (expected - set(self.not_loaded())):
            sample = sorted(model_state)[:3]
            raise RuntimeError(
                f"None of the checkpoint's {len(model_state)} tensors fits this {type(unwrap(self.model)).__name__} "
                f"model (checkpoint keys look like {sample}): it is a checkpoint of another architecture"
            )
        return incompatible

    def not_loaded(self) -> List[str]:
        """The model's tensors the last load left at their initialisation (absent, or of another shape)."""
        if self._incompatible is None:
            return []
        inc = self._incompatible
        return sorted(set(inc.missing_keys) | {k for k, _, _ in inc.incorrect_shapes})

    def _log_reinitialised(self, incorrect_shapes) -> None:
        """Say which tensors keep their fresh initialisation (shape differs from the checkpoint's), and why."""
        if not incorrect_shapes:
            return
        state = unwrap(self.model).state_dict()
        lines = []
        for key, shape_ckpt, shape_model in incorrect_shapes:
            why = "its shape differs"
            if key.endswith("cls_score.weight") or key.endswith("cls_score.bias"):
                why = (
                    f"the classification layer: the checkpoint has {shape_ckpt[0]} classes, the model "
                    f"{shape_model[0]} (fine-tuning on another dataset)"
                )
                plain = key[len("module.") :] if key.startswith("module.") else key
                if key.endswith("bias") and plain in state and state[plain].numel():
                    prior = torch.sigmoid(state[plain].float()).mean().item()
                    why += f"; bias at the prior probability {prior:.3g}"
            lines.append(
                f"{key}: {tuple(shape_ckpt)} in the checkpoint, {tuple(shape_model)} in the model: {why}"
            )
        logger.warning(
            f"Re-initialised {len(lines)} tensor(s) instead of loading them (they keep the model's own "
            "initialisation):\n  " + "\n  ".join(lines)
        )


def refuse_untrained_evaluation(weights: str, given: bool, setting: str) -> None:
    """
    Before ``--eval-only`` builds anything: SystemExit when ``weights`` are
    none, or the ones the config trains from (not ``given`` on the command
    line, or an ImageNet backbone, as the COCO configs start from), which
    would evaluate an untrained head. ``setting`` is how the weights are set,
    e.g. ``"train.init_checkpoint="`` or ``"MODEL.WEIGHTS "``.
    """
    how = f"pass the weights of a trained model: {setting}/path/to/model_final.pth"
    if not weights:
        raise SystemExit(f"error: --eval-only needs weights: {how}")
    if "ImageNetPretrained" in weights or not given:
        raise SystemExit(
            f"error: --eval-only with {setting}{weights}, the weights this config trains from "
            "(an ImageNet backbone), would evaluate a detector whose head is untrained: "
            f"{how} (a published MMDetection checkpoint: convert it first with tools/convert_mmdet_checkpoint.py)"
        )


def require_trained_head(
    checkpointer: CheckedCheckpointer,
    path: str,
    how: str = "train.init_checkpoint=/path/to/model_final.pth",
) -> None:
    """
    After loading weights to evaluate with: SystemExit naming the tensors of
    the detector outside its backbone (the head) that ``path`` did not hold,
    which an evaluation would run at their random initialisation. ``how``
    says how to give other weights.
    """
    head = [
        k[len("module.") :] if k.startswith("module.") else k for k in checkpointer.not_loaded()
    ]
    head = [k for k in head if not k.startswith("backbone.")]
    if not head:
        return
    shown = ", ".join(head[:6]) + (f" and {len(head) - 6} more" if len(head) > 6 else "")
    raise SystemExit(
        f"error: {path} holds no trained weights for {len(head)} tensor(s) of the detector's head ({shown}): "
        "evaluating would measure a head at its random initialisation. Give the weights of a trained model: "
        f"{how} (a published MMDetection checkpoint: convert it first with tools/convert_mmdet_checkpoint.py)"
    )


def holds_layer(path: str, model: torch.nn.Module, key: str) -> bool:
    """
    Whether the checkpoint ``path`` holds ``key`` with the shape it has in
    ``model``, so that loading it would keep that trained layer (False for
    no path, a file that cannot be read here, or an ImageNet backbone).
    """
    if not path or "ImageNetPretrained" in path:
        return False
    shape = unwrap(model).state_dict()[key].shape if key in unwrap(model).state_dict() else None
    reader = DetectionCheckpointer(torch.nn.Module())
    try:
        local = path if os.path.isfile(path) else reader.path_manager.get_local_path(path)
        reader._parsed_url_during_load = urlparse(local)  # what load() sets before reading a file
        state = reader._load_file(local)
    except Exception:  # the load itself will say what is wrong with the file
        return False
    state = state.get("model", state) if isinstance(state, dict) else {}
    value = state.get(key, state.get(f"module.{key}")) if isinstance(state, dict) else None
    return value is not None and shape is not None and tuple(value.shape) == tuple(shape)
