"""
detectron2's checkpointer, made to say what it could not load and why, and
the one policy for loading weights to evaluate, export or run a detector
(:func:`load_trained_weights`): every tensor of the detector outside its
backbone must be loaded, and an MMDetection checkpoint is sent to the
converter. Fine-tuning from a checkpoint keeps that checkpoint's box layer
(:func:`holds_layer`).
"""

import logging
import os
from typing import List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .detectron2_internals import read_checkpoint_file
from .devices import unwrap
from .ema import EMA_KEY, averaged_weights
from .errors import WeightsError

__all__ = [
    "CheckedCheckpointer",
    "load_trained_weights",
    "require_trained_head",
    "holds_layer",
    "box_layer",
    "CONVERT_HINT",
]

logger = logging.getLogger(__name__)

CONVERT_HINT = "convert it first: python tools/convert_mmdet_checkpoint.py IN.pth OUT.pth"
# the top-level modules of MMDetection's dense detectors, by which its state dicts are known
_MMDET_PREFIXES = ("bbox_head.", "neck.")


def _mmdet_refusal(keys: List[str]) -> Optional[str]:
    """The refusal for a state dict of MMDetection's layout (None: not one)."""
    if not any(k.startswith(_MMDET_PREFIXES) for k in keys):
        return None
    sample = [k for k in keys if k.startswith(_MMDET_PREFIXES)][:2]
    return (
        f"it is an MMDetection checkpoint (its keys look like {sample}), which gfl-d2's "
        f"model reads only after conversion: {CONVERT_HINT}"
    )


class CheckedCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` that refuses, with a clear message, a file it
    cannot read (truncated, not a checkpoint) and a checkpoint of which not a
    single tensor fits the model (another architecture). A checkpoint that fits
    part of the model (an ImageNet backbone, another detector's backbone) loads
    as usual, with detectron2's report of what was not loaded, which
    :meth:`not_loaded` returns.

    ``use_ema=True`` (the weights to evaluate or run): the weight EMA a
    checkpoint holds (entry ``"ema"``) is loaded as the model, in place of the
    trained weights (``"model"``, which resuming a run loads); the log says which.
    """

    _incompatible = None

    def __init__(self, model, save_dir: str = "", *, use_ema: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.use_ema = use_ema

    # fvcore's hook for reading a file (detectron2's DetectionCheckpointer overrides it too)
    def _load_file(self, filename: str):
        try:
            loaded = super()._load_file(filename)
        except Exception as e:
            raise WeightsError(
                f"Cannot read checkpoint {filename}: {type(e).__name__}: {e}. "
                "Is the file complete (not truncated) and a PyTorch / detectron2 checkpoint?"
            ) from e
        return self._choose_weights(loaded, filename) if self.use_ema else loaded

    def _choose_weights(self, loaded: dict, filename: str) -> dict:
        """``loaded`` with its weight EMA as the model's weights, if it holds one."""
        ema = loaded.pop(EMA_KEY, None) if isinstance(loaded, dict) else None
        if isinstance(ema, dict) and ema:
            logger.info(f"Loading the weight EMA ('{EMA_KEY}') of {filename}")
            return dict(loaded, model=averaged_weights(ema))
        logger.info(f"Loading the trained weights ('model') of {filename}: it holds no weight EMA")
        return loaded

    # fvcore's hook for loading the state dict into the model
    def _load_model(self, checkpoint):
        model_state = checkpoint.get("model")
        if not isinstance(model_state, dict) or not model_state:
            raise WeightsError("The checkpoint holds no model weights (no 'model' state dict)")
        wrapped = model_state.get("state_dict")  # a checkpoint saved by MMDetection / mmengine
        mmdet = _mmdet_refusal(list(wrapped) if isinstance(wrapped, dict) else list(model_state))
        if mmdet:
            raise WeightsError(f"The checkpoint cannot be loaded: {mmdet}")
        not_tensors = [k for k, v in model_state.items() if not hasattr(v, "shape")]
        if not_tensors:
            raise WeightsError(
                "The checkpoint holds no model weights: its entries "
                f"{not_tensors[:3]} are not tensors"
            )
        self._fit_class_rows(model_state, checkpoint.get("num_classes"))
        self._unexpected = [k for k in model_state if k not in self.model.state_dict()]
        incompatible = super()._load_model(checkpoint)
        self._incompatible = incompatible
        self._log_reinitialised(incompatible.incorrect_shapes)
        expected = set(self.model.state_dict().keys())
        if expected and not (expected - set(self.not_loaded())):
            sample = sorted(model_state)[:3]
            raise WeightsError(
                f"None of the checkpoint's {len(model_state)} tensors fits this "
                f"{type(unwrap(self.model)).__name__} model (checkpoint keys look like "
                f"{sample}): it is a checkpoint of another architecture"
            )
        return incompatible

    def _fit_class_rows(self, state: dict, num_classes) -> None:
        """
        A head whose classes share layers with the box outputs (NanoDet-Plus's)
        keeps the box rows of a checkpoint trained with another number of
        classes (its ``fit_class_rows``); ``num_classes``: the checkpoint's, if it says.
        """
        fit = getattr(getattr(unwrap(self.model), "head", None), "fit_class_rows", None)
        if fit is None:
            return
        prefix = "module.head." if any(k.startswith("module.head.") for k in state) else "head."
        fitted = fit(state, prefix, num_classes if isinstance(num_classes, int) else None)
        if fitted:
            lines = [
                f"{key}: the checkpoint has {theirs} classes, the model {ours}"
                for key, (theirs, ours) in fitted.items()
            ]
            logger.warning(
                f"Loaded only the box rows of {len(lines)} tensor(s) whose rows the classes share "
                "with the box distributions; their class rows keep the model's initialisation "
                "(fine-tuning on another dataset):\n  " + "\n  ".join(lines)
            )

    def not_loaded(self) -> List[str]:
        """
        The model's tensors the last load left at their initialisation (absent,
        or of another shape).
        """
        if self._incompatible is None:
            return []
        inc = self._incompatible
        return sorted(set(inc.missing_keys) | {k for k, _, _ in inc.incorrect_shapes})

    def load_problems(self) -> List[str]:
        """
        What the last load did not do, in words (empty: every tensor of the model
        loaded and the checkpoint held no other): missing weights, weights the model
        does not have, weights of another shape.
        """
        if self._incompatible is None:
            return []
        inc, problems = self._incompatible, []
        if inc.missing_keys:
            problems.append(f"missing weights: {', '.join(inc.missing_keys[:8])}")
        unexpected = getattr(self, "_unexpected", [])
        if unexpected:
            problems.append(f"weights the model does not have: {', '.join(unexpected[:8])}")
        if inc.incorrect_shapes:
            shapes = ", ".join(
                f"{k} {tuple(a)} in the checkpoint, {tuple(b)} in the model"
                for k, a, b in inc.incorrect_shapes[:8]
            )
            problems.append(f"weights of another shape: {shapes}")
        return problems

    def _log_reinitialised(self, incorrect_shapes) -> None:
        """
        Say which tensors keep their fresh initialisation (shape differs from the checkpoint's),
        and why.
        """
        if not incorrect_shapes:
            return
        state = unwrap(self.model).state_dict()
        lines = []
        for key, shape_ckpt, shape_model in incorrect_shapes:
            why = "its shape differs"
            if key.endswith("cls_score.weight") or key.endswith("cls_score.bias"):
                why = (
                    f"the classification layer: the checkpoint has {shape_ckpt[0]} classes, "
                    "the model "
                    f"{shape_model[0]} (fine-tuning on another dataset)"
                )
                plain = key[len("module.") :] if key.startswith("module.") else key
                if key.endswith("bias") and plain in state and state[plain].numel():
                    prior = torch.sigmoid(state[plain].float()).mean().item()
                    why += f"; bias at the prior probability {prior:.3g}"
            lines.append(
                f"{key}: {tuple(shape_ckpt)} in the checkpoint, "
                f"{tuple(shape_model)} in the model: {why}"
            )
        logger.warning(
            f"Re-initialised {len(lines)} tensor(s) instead of loading them "
            "(they keep the model's own "
            "initialisation):\n  " + "\n  ".join(lines)
        )


def require_trained_head(
    checkpointer: CheckedCheckpointer,
    path: str,
    how: str = "train.init_checkpoint=/path/to/model_final.pth",
) -> None:
    """
    After loading weights to evaluate, export or run with: :class:`WeightsError`
    naming the tensors of the detector outside its backbone (the head) that
    ``path`` did not hold, which would run at their random initialisation.
    ``how`` says how to give other weights.
    """
    plain = [
        k[len("module.") :] if k.startswith("module.") else k for k in checkpointer.not_loaded()
    ]
    head = [k for k in plain if not k.startswith("backbone.")]
    if not head:
        return
    shown = ", ".join(head[:6]) + (f" and {len(head) - 6} more" if len(head) > 6 else "")
    raise WeightsError(
        f"{path} holds no trained weights for {len(head)} tensor(s) of the detector's head "
        f"({shown}): the detector would run a head at its random initialisation. Give the "
        f"weights of a trained model: {how} (a published MMDetection checkpoint: "
        f"{CONVERT_HINT})"
    )


def _fetch(checkpointer: DetectionCheckpointer, path: str, how: str) -> str:
    """
    The local file of ``path`` (a file, or a URL fetched into the cache); WeightsError if none.
    """
    if os.path.isfile(path):
        return path
    if "://" not in path:
        raise WeightsError(f"checkpoint not found: {path}; {how}")
    try:
        return checkpointer.path_manager.get_local_path(path)
    except Exception as e:
        raise WeightsError(
            f"cannot fetch {path} ({type(e).__name__}: {e}); give a local file: {how}"
        ) from None


def load_trained_weights(
    model: torch.nn.Module, path: str, how: str = "train.init_checkpoint=/path/to/model.pth"
) -> CheckedCheckpointer:
    """
    The one way to load the weights a detector is evaluated, exported or run
    with: ``path`` into ``model`` (:class:`CheckedCheckpointer`), then
    :func:`require_trained_head`. Raises :class:`WeightsError` for no weights, a
    file that cannot be read, an MMDetection checkpoint (to be converted) or a
    head left untrained. ``how`` says how to give other weights. A checkpoint
    holding a weight EMA gives the EMA (``"ema"``), not the trained weights.
    """
    if not path:
        raise WeightsError(f"no weights given: {how}")
    checkpointer = CheckedCheckpointer(model, use_ema=True)
    _fetch(checkpointer, path, how)
    checkpointer.load(path, checkpointables=[])
    require_trained_head(checkpointer, path, how)
    return checkpointer


def holds_layer(path: str, model: torch.nn.Module, key: str) -> bool:
    """
    Whether the checkpoint ``path`` holds ``key`` with the shape it has in
    ``model``, so that loading it would keep that trained layer (False for
    no path, a file that cannot be read here, or one without that layer).
    """
    if not path:
        return False
    shape = unwrap(model).state_dict()[key].shape if key in unwrap(model).state_dict() else None
    reader = DetectionCheckpointer(torch.nn.Module())
    try:
        local = path if os.path.isfile(path) else reader.path_manager.get_local_path(path)
        state = read_checkpoint_file(reader, local)
    except Exception:  # the load itself will say what is wrong with the file
        return False
    classes = state.get("num_classes") if isinstance(state, dict) else None
    state = state.get("model", state) if isinstance(state, dict) else {}
    value = state.get(key, state.get(f"module.{key}")) if isinstance(state, dict) else None
    if value is None or shape is None:
        return False
    fit = getattr(unwrap(model).head, "fit_class_rows", None) if key.startswith("head.") else None
    if fit is not None and tuple(value.shape) != tuple(shape):  # a class change keeps the box rows
        one = {key: value}
        fit(one, "head.", classes if isinstance(classes, int) else None)
        value = one[key]
    return tuple(value.shape) == tuple(shape)


def box_layer(model: torch.nn.Module) -> str:
    """
    The state-dict key of a GFL's box layer, whose shape fixes n: its head's
    ``box_layer`` (``head.bbox_pred.weight`` of :class:`~gfl_d2.modeling.GFLHead`,
    ``head.outputs.0.weight`` of NanoDet-Plus's head, where the classes share it).
    """
    return f"head.{unwrap(model).head.box_layer}.weight"
