"""
NanoDet-Plus's parameter names (RangiLyu/nanodet: ``backbone.*`` ShuffleNetV2,
``fpn.*`` GhostPAN, ``head.*`` NanoDetPlusHead) -> gfl-d2's
(``backbone.bottom_up.*`` :class:`~gfl_d2.modeling.shufflenet.ShuffleNetV2`
inside ``backbone.*`` :class:`~gfl_d2.modeling.ghost_pan.GhostPAN`, ``head.*``
:class:`~gfl_d2.modeling.nanodet_head.NanoDetPlusHead`).
"""

import re

from .convert_backbone import _BN, ConversionError, rename_shufflenet_key

__all__ = ["rename_nanodet_key"]

_PARAM = rf"(weight|{_BN[1:-1]})"
# a GhostBottleneck's Sequential indices -> gfl_d2's names
_GHOST = {
    "primary_conv.0": "primary",
    "primary_conv.1": "primary.norm",
    "cheap_operation.0": "cheap",
    "cheap_operation.1": "cheap.norm",
}
_SHORTCUT = {
    "0": "shortcut_dw",
    "1": "shortcut_dw.norm",
    "2": "shortcut_pw",
    "3": "shortcut_pw.norm",
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
