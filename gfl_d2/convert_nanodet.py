"""
NanoDet-Plus's parameter names (RangiLyu/nanodet: ``backbone.*`` ShuffleNetV2,
``fpn.*`` GhostPAN, ``head.*`` NanoDetPlusHead) -> gfl-d2's
(``backbone.bottom_up.*`` :class:`~gfl_d2.modeling.shufflenet.ShuffleNetV2`
inside ``backbone.*`` :class:`~gfl_d2.modeling.ghost_pan.GhostPAN`, ``head.*``
:class:`~gfl_d2.modeling.nanodet_head.NanoDetPlusHead`).
"""

import re
from collections import OrderedDict
from typing import Dict, Tuple

import torch

from .convert_backbone import _BN, ConversionError, rename_shufflenet_key

__all__ = [
    "rename_nanodet_key",
    "rename_nanodet_aux_key",
    "is_nanodet",
    "convert_nanodet_state_dict",
    "NANODET_CONFIGS",
]

# NanoDet-Plus's integral buffer (the bins 0..n), and its training-only parts
INTEGRAL_BUFFER = "head.distribution_project.project"
TRAINING_ONLY = ("aux_fpn.", "aux_head.")
# gfl-d2's config of each released size: stage-2 channels of ShuffleNetV2 -> (name, sizes)
NANODET_CONFIGS = {
    116: ("NanoDet-Plus-m", "COCO-Detection/NanoDet/nanodet_plus_m_{}.py"),
    176: ("NanoDet-Plus-m-1.5x", "COCO-Detection/NanoDet/nanodet_plus_m_1_5x_{}.py"),
}

_PARAM = rf"(weight|{_BN[1:-1]})"
# a GhostBottleneck's Sequential indices -> gfl_d2's names
_GHOST = {
    "primary_conv.0": "primary",
    "primary_conv.1": "primary.norm",
    "cheap_operation.0": "cheap",
    "cheap_operation.1": "cheap.norm",
}
_SHORTCUT = {
    "0": "shortcut.depthwise",
    "1": "shortcut.depthwise.norm",
    "2": "shortcut.pointwise",
    "3": "shortcut.pointwise.norm",
}
_SEPARABLE = {"depthwise": "depthwise", "dwnorm": "depthwise.norm", "pointwise": "pointwise"}
_SEPARABLE["pwnorm"] = "pointwise.norm"
_LISTS = {
    "downsamples": "downsample",
    "extra_lvl_in_conv": "extra_in",
    "extra_lvl_out_conv": "extra_out",
    "top_down_blocks": "top_down",
    "bottom_up_blocks": "bottom_up_merge",
}


def _rename_ghost_block(rest: str) -> str:
    m = re.match(rf"^blocks\.(\d+)\.(ghost[12])\.(\w+\.\d)\.{_PARAM}$", rest)
    if m and m.group(3) in _GHOST:
        return f"{m.group(1)}.{m.group(2)}.{_GHOST[m.group(3)]}.{m.group(4)}"
    m = re.match(rf"^blocks\.(\d+)\.shortcut\.(\d)\.{_PARAM}$", rest)
    if m and m.group(2) in _SHORTCUT:
        return f"{m.group(1)}.{_SHORTCUT[m.group(2)]}.{m.group(3)}"
    return ""


def _rename_fpn(rest: str) -> str:
    m = re.match(rf"^reduce_layers\.(\d+)\.(conv|bn)\.{_PARAM}$", rest)
    if m:
        return f"reduce.{m.group(1)}{'' if m.group(2) == 'conv' else '.norm'}.{m.group(3)}"
    m = re.match(r"^(\w+?)\.(\d+)\.(.*)$", rest)
    if not m or m.group(1) not in _LISTS:
        return ""
    name, index, inner = _LISTS[m.group(1)], m.group(2), m.group(3)
    if m.group(1).endswith("_blocks"):
        inner = _rename_ghost_block(inner)
    else:
        sep = re.match(rf"^(depthwise|dwnorm|pointwise|pwnorm)\.{_PARAM}$", inner)
        inner = f"{_SEPARABLE[sep.group(1)]}.{sep.group(2)}" if sep else ""
    return f"{name}.{index}.{inner}" if inner else ""


def _rename_head(rest: str) -> str:
    m = re.match(rf"^cls_convs\.(\d+)\.(\d+)\.(depthwise|dwnorm|pointwise|pwnorm)\.{_PARAM}$", rest)
    if m:
        return f"towers.{m.group(1)}.{m.group(2)}.{_SEPARABLE[m.group(3)]}.{m.group(4)}"
    m = re.match(r"^gfl_cls\.(\d+)\.(weight|bias)$", rest)
    return f"outputs.{m.group(1)}.{m.group(2)}" if m else ""


def rename_nanodet_key(key: str) -> str:
    """
    A NanoDet-Plus backbone, neck or head key (``backbone.stage2.0.branch1.0.weight``,
    ``fpn.top_down_blocks.0.blocks.0.ghost1.primary_conv.1.bias``) -> its gfl-d2 name
    (``backbone.bottom_up.stage2.0.branch1_dw.weight``,
    ``backbone.top_down.0.0.ghost1.primary.norm.bias``); ConversionError if it has none.
    """
    if key.startswith("backbone."):
        return "backbone.bottom_up." + rename_shufflenet_key(key)
    if key.startswith("head."):
        renamed = _rename_head(key[len("head.") :])
        if renamed:
            return "head." + renamed
    elif key.startswith("fpn."):
        renamed = _rename_fpn(key[len("fpn.") :])
        if renamed:
            return "backbone." + renamed
    raise ConversionError(f"NanoDet key {key!r} has no counterpart in gfl-d2's NanoDet-Plus")


# SimpleConvHead's names -> GFLHead's: a tower of (conv, norm, activation) triples
_AUX_TOWERS = {"cls_convs": "cls_subnet", "reg_convs": "bbox_subnet"}
_AUX_OUTPUTS = {"gfl_cls": "cls_score", "gfl_reg": "bbox_pred"}


def rename_nanodet_aux_key(key: str) -> str:
    """
    A key of NanoDet-Plus's training-only parts -> gfl-d2's
    :class:`~gfl_d2.modeling.NanoDetPlus`: ``aux_fpn.*`` (the neck's copy) ->
    ``aux_neck.*`` as :func:`rename_nanodet_key` names the neck,
    ``aux_head.*`` (``SimpleConvHead``) -> ``aux_head.*`` (a
    :class:`~gfl_d2.modeling.GFLHead`). The converter keeps them: fine-tuning
    starts from a trained auxiliary head, as NanoDet's own does (inference
    never runs them).
    """
    if key.startswith("aux_fpn."):
        return "aux_neck." + rename_nanodet_key(key[len("aux_") :])[len("backbone.") :]
    m = re.match(r"^aux_head\.(cls_convs|reg_convs)\.(\d+)\.(conv|gn)\.(weight|bias)$", key)
    if m:
        index = 3 * int(m.group(2)) + (m.group(3) == "gn")
        return f"aux_head.{_AUX_TOWERS[m.group(1)]}.{index}.{m.group(4)}"
    m = re.match(r"^aux_head\.(gfl_cls|gfl_reg)\.(weight|bias)$", key)
    if m:
        return f"aux_head.{_AUX_OUTPUTS[m.group(1)]}.{m.group(2)}"
    if re.match(r"^aux_head\.scales\.\d+\.scale$", key):
        return key
    raise ConversionError(f"NanoDet key {key!r} has no counterpart in gfl-d2's NanoDetPlus")


def is_nanodet(keys) -> bool:
    """A NanoDet(-Plus) state dict: its GhostPAN's reduce convs, under any Lightning prefix."""
    return any(re.match(r"^(avg_model\.|model\.)?fpn\.reduce_layers\.", k) for k in keys)


def _model_weights(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict, str]:
    """
    The model's tensors without a prefix: the EMA copy ``avg_model.*`` of a
    Lightning ``.ckpt`` (what NanoDet evaluates and exports), else ``model.*``,
    else the state dict itself (NanoDet's ``.pth``); and which it was.
    """
    for prefix, what in (("avg_model.", "the EMA weights (avg_model.*)"), ("model.", "model.*")):
        picked = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if picked:
            return picked, what
    return dict(state_dict), "the state dict"


def _check_bins(value, reg_max: int) -> None:
    if not torch.is_tensor(value) or not torch.equal(
        value.detach().float().cpu().flatten(), torch.linspace(0, reg_max, reg_max + 1)
    ):
        raise ConversionError(
            f"{INTEGRAL_BUFFER!r} does not hold the bins 0..{reg_max} that the head's "
            f"{4 * (reg_max + 1)} box channels per location mean"
        )


def convert_nanodet_state_dict(state_dict: Dict[str, torch.Tensor]):
    """
    A NanoDet-Plus state dict (Lightning ``.ckpt``'s or NanoDet's ``.pth``) -> gfl-d2's.

    Returns:
        (converted state dict, info): info has ``name``, ``config`` (with ``{}``
        for the input size), ``num_classes``, ``reg_max``, ``source`` (which
        weights were taken), ``mapping`` and ``dropped`` ({key: why}).
    """
    weights, source = _model_weights(state_dict)
    if INTEGRAL_BUFFER not in weights or "head.gfl_cls.0.weight" not in weights:
        raise ConversionError("not a NanoDet-Plus model: no head.gfl_cls / integral buffer")
    reg_max = int(weights[INTEGRAL_BUFFER].numel()) - 1
    _check_bins(weights[INTEGRAL_BUFFER], reg_max)
    num_classes = int(weights["head.gfl_cls.0.weight"].shape[0]) - 4 * (reg_max + 1)
    stage2 = weights.get("backbone.stage2.0.branch1.2.weight")
    width = None if stage2 is None else int(stage2.shape[0]) * 2
    if width not in NANODET_CONFIGS:
        raise ConversionError(
            f"a ShuffleNetV2 whose stage 2 has {width} channels: gfl-d2 has configs for "
            f"{sorted(NANODET_CONFIGS)} (1.0x, 1.5x)"
        )
    converted, mapping, dropped = OrderedDict(), {}, {}
    for key, value in weights.items():
        if key.endswith("num_batches_tracked"):
            dropped[key] = "BatchNorm counter"
        elif key == INTEGRAL_BUFFER:
            dropped[key] = f"the integral's bins 0..{reg_max} (gfl-d2 computes them from n)"
        elif key.startswith(TRAINING_ONLY):  # kept for fine-tuning; inference never runs them
            converted[rename_nanodet_aux_key(key)] = value.detach().clone()
            mapping[key] = rename_nanodet_aux_key(key)
        else:
            converted[rename_nanodet_key(key)] = value.detach().clone()
            mapping[key] = rename_nanodet_key(key)
    name, config = NANODET_CONFIGS[width]
    info = dict(name=name, config=config, num_classes=num_classes, reg_max=reg_max, source=source)
    info.update(mapping=mapping, dropped=dropped)
    return converted, info
