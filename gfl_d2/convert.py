"""
Conversion of GFL checkpoints in MMDetection's format (MMDetection v2/v3 model
zoo with its LD students, the authors' GFL V2 release ``implus/GFocalV2``) to
this package's detectron2 model, and of ImageNet backbones to training
starting points.

Supported: the backbones of :mod:`gfl_d2.convert_backbone` (ResNet-18 to 152,
ResNeXt, Res2Net-v1d, deformable stages), FPN with P6/P7 from P5's output, the
GFL head and GFL V2's ``GFocalHead`` (its distribution-guided quality predictor
``reg_conf``). Anything else (other necks or heads, the authors' MMDetection
1.1 fork of GFL V1) is refused with the reason.
"""

import logging
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

from .convert_backbone import (
    ConversionError,
    backbone_name,
    convert_backbone_state_dict,
    describe_backbone,
    is_backbone_only,
    rename_backbone_key,
)
from .convert_nanodet import convert_nanodet_state_dict, is_nanodet

__all__ = [
    "ConversionError",
    "ConversionReport",
    "convert_checkpoint",
    "convert_mmdet_state_dict",
    "describe_mmdet_gfl",
    "load_mmdet_checkpoint",
]

logger = logging.getLogger(__name__)

# MMDetection's ``Integral`` keeps the bin values 0, 1, ..., n as a persistent
# buffer, so every checkpoint it saves holds them; gfl-d2 derives them from n
INTEGRAL_BUFFER = "bbox_head.integral.project"
# GFL V2's quality predictor: Conv2d(4 (k + 1), c, 1), ReLU, Conv2d(c, 1, 1), Sigmoid
DGQP_KEYS = (
    "bbox_head.reg_conf.0.weight",
    "bbox_head.reg_conf.0.bias",
    "bbox_head.reg_conf.2.weight",
    "bbox_head.reg_conf.2.bias",
)


# keys renamed by a plain pattern; the structured ones are handled in _rename
_RULES: List[Tuple[str, str]] = [
    (r"^bbox_head\.gfl_cls\.(weight|bias)$", r"head.cls_score.\1"),
    (r"^bbox_head\.gfl_reg\.(weight|bias)$", r"head.bbox_pred.\1"),
    (r"^bbox_head\.scales\.(\d)\.scale$", r"head.scales.\1.scale"),
    (r"^bbox_head\.reg_conf\.([02])\.(weight|bias)$", r"head.dgqp.layers.\1.\2"),
]


def _rename(key: str, res2net: bool = False) -> str:
    """mmdet key -> detectron2 key; ConversionError for a key of unknown meaning."""
    if key.startswith("backbone."):
        return "backbone.bottom_up." + rename_backbone_key(key, res2net)
    m = re.match(r"^neck\.lateral_convs\.(\d)\.conv\.(weight|bias)$", key)
    if m:
        return f"backbone.fpn_lateral{int(m.group(1)) + 3}.{m.group(2)}"
    m = re.match(r"^neck\.fpn_convs\.(\d)\.conv\.(weight|bias)$", key)
    if m:
        i = int(m.group(1))
        if i <= 2:
            return f"backbone.fpn_output{i + 3}.{m.group(2)}"
        if i in (3, 4):
            return f"backbone.top_block.p{i + 3}.{m.group(2)}"
        raise ConversionError(f"unexpected FPN level in {key!r} (expected 5 outputs, P3-P7)")
    m = re.match(r"^bbox_head\.(cls|reg)_convs\.(\d+)\.(conv|gn)\.(weight|bias)$", key)
    if m:
        tower = "cls_subnet" if m.group(1) == "cls" else "bbox_subnet"
        index = 3 * int(m.group(2)) + (0 if m.group(3) == "conv" else 1)
        if m.group(3) == "conv" and m.group(4) == "bias":
            raise ConversionError(
                f"{key!r}: the head's tower convs have no bias in GFL (GN follows them)"
            )
        return f"head.{tower}.{index}.{m.group(4)}"
    for pattern, target in _RULES:
        if re.match(pattern, key):
            return re.sub(pattern, target, key)
    raise ConversionError(f"key {key!r} has no counterpart in gfl-d2's GFL")


def _describe_dgqp(state_dict: Dict[str, torch.Tensor], meta: Optional[Dict]) -> Dict:
    """
    GFL V2's head: the quality predictor's widths, and the classifier's extra
    channel. The authors' V2 configs set ``use_sigmoid=False`` on QFL (the head
    already outputs probabilities), so MMDetection gives ``gfl_cls`` one
    channel more than there are classes: a background column that QFL trains
    towards 0 at every location and that is no class. It is dropped.
    """
    missing = [k for k in DGQP_KEYS if k not in state_dict]
    if missing:
        raise ConversionError(
            f"a GFL V2 head (bbox_head.reg_conf.*) without {missing}: an incomplete checkpoint"
        )
    first, last = state_dict[DGQP_KEYS[0]], state_dict[DGQP_KEYS[2]]
    if first.dim() != 4 or first.shape[2:] != (1, 1) or last.shape != (1, first.shape[0], 1, 1):
        raise ConversionError(
            f"bbox_head.reg_conf has the shapes {tuple(first.shape)} and {tuple(last.shape)}, "
            "not GFL V2's "
            "Conv2d(4 (k + 1), c, 1) -> Conv2d(c, 1, 1)"
        )
    in_channels = int(first.shape[1])
    if in_channels % 4:
        raise ConversionError(
            f"bbox_head.reg_conf.0 reads {in_channels} statistics, not 4 per edge"
        )
    channels = int(state_dict["bbox_head.gfl_cls.weight"].shape[0])
    classes = (meta or {}).get("CLASSES") or (meta or {}).get("dataset_meta", {}).get("classes")
    if classes is not None and len(classes) != channels - 1:
        raise ConversionError(
            f"bbox_head.gfl_cls has {channels} channels and the checkpoint names {len(classes)} "
            "classes: GFL V2's "
            "release has one background channel more than classes (use_sigmoid=False), "
            "this checkpoint does not"
        )
    if channels < 2:
        raise ConversionError(
            f"bbox_head.gfl_cls has {channels} channel: "
            "GFL V2's has the classes and a background one"
        )
    return dict(
        version=2,
        num_classes=channels - 1,
        dgqp_statistics=in_channels,
        dgqp_channels=int(first.shape[0]),
    )


# the authors' GFL V1 code (implus/GFocal, an MMDetection 1.1 fork) names the integral's buffer so
FORK_INTEGRAL_BUFFER = "bbox_head.distribution_project.project"


def _refuse_unsupported(keys) -> None:
    """
    ConversionError naming why a checkpoint with these keys is not a GFL this converter understands.
    """
    if not any(k.startswith("backbone.") for k in keys):
        raise ConversionError("no 'backbone.*' keys: not an MMDetection detector checkpoint")
    if "bbox_head.gfl_cls.weight" not in keys or "bbox_head.gfl_reg.weight" not in keys:
        heads = sorted({k.split(".")[1] for k in keys if k.startswith("bbox_head.")})
        raise ConversionError(f"not a GFL checkpoint: its head has {heads}, not gfl_cls/gfl_reg")
    if not any(k.startswith("neck.lateral_convs.") for k in keys):
        raise ConversionError("not an FPN neck (no neck.lateral_convs.*)")


def _describe_fpn(state_dict: Dict[str, torch.Tensor]) -> int:
    """
    The FPN's channels; ConversionError unless it has GFL's five outputs with
    P6/P7 from P5's output.
    """
    num_fpn = len({k.split(".")[2] for k in state_dict if k.startswith("neck.fpn_convs.")})
    if num_fpn != 5:
        raise ConversionError(
            f"the FPN has {num_fpn} output convs; GFL's has 5 (P3-P7, P6/P7 from P5)"
        )
    p6_in = state_dict["neck.fpn_convs.3.conv.weight"].shape[1]
    fpn_channels = state_dict["neck.fpn_convs.0.conv.weight"].shape[0]
    if p6_in != fpn_channels:
        raise ConversionError(
            f"P6 is computed from {p6_in} channels: "
            "the FPN's extra convs are not 'on_output' (P5's output)"
        )
    return int(fpn_channels)


# gfl-d2's config of each released architecture: (V2?, kind, depth, groups, deformable stages)
_PLAIN = (False, False, False, False)
_C3_C5, _C4_C5 = (False, True, True, True), (False, False, True, True)
_CONFIGS = {
    (False, "resnet", 18, 1, _PLAIN): "COCO-Detection/Distillation/ld_R_18_gfl_R_101_FPN_1x.py",
    (False, "resnet", 34, 1, _PLAIN): "COCO-Detection/Distillation/ld_R_34_gfl_R_101_FPN_1x.py",
    (False, "resnet", 50, 1, _PLAIN): "COCO-Detection/gfl_R_50_FPN_1x.py",
    (False, "resnet", 101, 1, _PLAIN): "COCO-Detection/gfl_R_101_FPN_ms2x.py",
    (False, "resnet", 101, 1, _C3_C5): "COCO-Detection/gfl_R_101_FPN_dconv_c3_c5_ms2x.py",
    (False, "resnet", 101, 32, _PLAIN): "COCO-Detection/gfl_X_101_32x4d_FPN_ms2x.py",
    (False, "resnet", 101, 32, _C4_C5): "COCO-Detection/gfl_X_101_32x4d_FPN_dconv_c4_c5_ms2x.py",
    (True, "resnet", 50, 1, _PLAIN): "COCO-Detection/gflv2_R_50_FPN_1x.py",
    (True, "resnet", 101, 1, _PLAIN): "COCO-Detection/gflv2_R_101_FPN_ms2x.py",
    (True, "resnet", 101, 1, _C3_C5): "COCO-Detection/gflv2_R_101_FPN_dconv_c3_c5_ms2x.py",
    (True, "resnet", 101, 32, _C4_C5): "COCO-Detection/gflv2_X_101_32x4d_FPN_dconv_c4_c5_ms2x.py",
    (True, "res2net", 101, 1, _C4_C5): "COCO-Detection/gflv2_Res2Net_101_FPN_dconv_c4_c5_ms2x.py",
}


def _nearest_config(v2: bool, arch: Tuple, deform: Tuple):
    """
    The key and config of ``_CONFIGS`` with this backbone architecture, deformable
    or not as ``deform``: the same stages and version if there is one, else the
    same stages, else the same version.
    """
    candidates = [
        (k, c) for k, c in _CONFIGS.items() if k[1:4] == arch and any(k[4]) == any(deform)
    ]
    if not candidates:
        return None, None
    return min(candidates, key=lambda kc: (kc[0][4] != deform, kc[0][0] != v2))


def _matching_config(backbone: Dict, v2: bool) -> Tuple[str, List[str]]:
    """
    The config under configs/ of this backbone and GFL version, and the
    overrides it needs where the checkpoint differs from the release the config
    reproduces: the quality branch (a config of the other version), the
    deformable stages, the offset kind (v1 and one offset group in the releases).
    """
    arch = (backbone["kind"], backbone["depth"], backbone["num_groups"])
    deform = tuple(backbone["deform_on_per_stage"])
    width = backbone["width_per_group"] if backbone["num_groups"] > 1 else 64
    standard_width = backbone["kind"] == "res2net" or width == (4 if arch[2] > 1 else 64)
    key, config = _nearest_config(v2, arch, deform)
    if config is None or not standard_width:
        known = sorted({f"{k[1]}-{k[2]}" + ("" if k[3] == 1 else f"-{k[3]}g") for k in _CONFIGS})
        raise ConversionError(
            f"GFL{' V2' if v2 else ''} with a {backbone_name(backbone)} backbone: gfl-d2 has no "
            f"config for it (it has one for each released architecture: {', '.join(known)})"
        )
    overrides = [] if key[0] == v2 else [f"model.head.quality={'dgqp' if v2 else 'joint'}"]
    stages = "model.backbone.bottom_up.stages"
    if key[4] != deform:
        overrides.append(f"{stages}.deform_on_per_stage=[{','.join(map(str, deform))}]")
    if backbone["deform_modulated"] or backbone["deform_num_groups"] != 1:
        overrides += [f"{stages}.deform_modulated={backbone['deform_modulated']}"]
        overrides += [f"{stages}.deform_num_groups={backbone['deform_num_groups']}"]
    return config, overrides


# MMDetection's release of each architecture of the authors' V1 fork (configs/gfl/README.md)
_MMDET_TWINS = {
    ("resnet", 50, 1): "gfl_r50_fpn_1x_coco (40.2 AP) or gfl_r50_fpn_mstrain_2x_coco (42.9 AP)",
    ("resnet", 101, 1): "gfl_r101_fpn_mstrain_2x_coco (44.7 AP)",
    ("resnet", 101, 32): "gfl_x101_32x4d_fpn_mstrain_2x_coco (45.9 AP)",
}
_MMDET_DCN_TWINS = {
    ("resnet", 101, 1): "gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco (47.1 AP)",
    ("resnet", 101, 32): "gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco (48.1 AP)",
}


def _fork_refusal(backbone: Dict) -> str:
    """Why a checkpoint of the authors' V1 fork is refused, and MMDetection's model to use."""
    arch = (backbone["kind"], backbone["depth"], backbone["num_groups"])
    twins = _MMDET_DCN_TWINS if any(backbone["deform_on_per_stage"]) else _MMDET_TWINS
    twin = twins.get(arch, "the GFL model of the same backbone in MMDetection's configs/gfl")
    return (
        f"{FORK_INTEGRAL_BUFFER!r}: a checkpoint of the authors' GFL V1 code (implus/GFocal, "
        f"an MMDetection 1.1 fork), {backbone_name(backbone)}. Its weights were trained with "
        "MMDetection 1.x's box conventions: anchor centres at (stride - 1) / 2 of each cell "
        "(boxes move by 3.5 to 63.5 pixels from P3 to P7 under gfl-d2's and MMDetection 2+'s "
        "centres at 0) and '+1' box widths (clipping to w - 1, NMS areas), which gfl-d2 does "
        "not implement and cannot test without that fork's compiled ops. Convert MMDetection's "
        f"release of the same model instead: {twin}"
    )


def describe_mmdet_gfl(state_dict: Dict[str, torch.Tensor], meta: Optional[Dict] = None) -> Dict:
    """
    Recognise a GFL (V1 or V2) checkpoint and read its architecture off the
    tensor shapes.

    Args:
        state_dict: the checkpoint's ``state_dict``.
        meta: its ``meta`` (class names, if saved, are checked against the head).

    Returns:
        dict with version (1 or 2), depth, num_groups, width_per_group,
        num_classes, reg_max, num_convs, fpn_channels, the matching config file,
        and for V2 the quality predictor's ``dgqp_statistics`` (4 (k + 1)) and
        ``dgqp_channels``.
    """
    keys = set(state_dict)
    _refuse_unsupported(keys)
    backbone = describe_backbone({k: v for k, v in state_dict.items() if k.startswith("backbone.")})
    if FORK_INTEGRAL_BUFFER in keys:
        raise ConversionError(_fork_refusal(backbone))
    gfl_reg = state_dict["bbox_head.gfl_reg.weight"]
    if gfl_reg.shape[0] % 4:
        raise ConversionError(f"bbox_head.gfl_reg has {gfl_reg.shape[0]} channels, not 4 * (n+1)")
    fpn_channels = _describe_fpn(state_dict)
    v2 = (
        _describe_dgqp(state_dict, meta)
        if any(k.startswith("bbox_head.reg_conf.") for k in keys)
        else {}
    )
    info = dict(
        version=1,
        **backbone,
        num_classes=int(state_dict["bbox_head.gfl_cls.weight"].shape[0]),
        reg_max=int(gfl_reg.shape[0] // 4 - 1),
        num_convs=len({k.split(".")[2] for k in keys if k.startswith("bbox_head.cls_convs.")}),
        fpn_channels=fpn_channels,
    )
    info["config"], info["overrides"] = _matching_config(backbone, bool(v2))
    info.update(v2)
    return info


def _pickled_objects(path: str, error: Exception) -> List[str]:
    """
    The classes/functions a checkpoint pickles beyond tensors and containers, as torch names them.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (non-zip) format: torch's error names the first one
        names = re.findall(r"Unsupported global: GLOBAL (\S+)", str(error))
    return sorted(set(names))


def _load_pickled(path: str, objects: List[str], allow_pickle: bool):
    """
    A checkpoint that pickles ``objects`` besides tensors: refused, or loaded fully if allowed.
    """
    if not allow_pickle:
        raise ConversionError(
            f"{path}: cannot be loaded as weights only: besides tensors it pickles {objects}. "
            "Loading it fully runs code from the file; if you trust where it comes from, "
            "re-run with --allow-pickle"
        )
    logger.warning(
        f"--allow-pickle: fully unpickling {path} (it pickles {objects}); this can run "
        "arbitrary code from the file, so use it only on files from a source you trust"
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        package = (e.name or "?").split(".")[0]
        raise ConversionError(
            f"{path}: cannot be unpickled: it pickles objects of the package {package!r}, which "
            f"is not installed; install it (e.g. pip install {package}) or re-save only the "
            "checkpoint's state_dict"
        )
    except Exception as e:
        raise ConversionError(f"{path}: cannot be unpickled ({type(e).__name__}: {e})")


def load_mmdet_checkpoint(
    path: str, allow_pickle: bool = False
) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """
    Read an MMDetection checkpoint file.

    It is loaded with ``torch.load(weights_only=True)``, which restores only
    tensors and plain containers. A file that also pickles other Python objects
    (mmengine's log history in a checkpoint saved during training, say) is
    refused with their names unless ``allow_pickle``: full unpickling can run
    any code the file contains, so it must be asked for, and is logged.

    Returns:
        (state_dict, meta)
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:
        objects = _pickled_objects(path, e) if "can still be loaded" in str(e) else []
        if not objects:
            raise ConversionError(
                f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})"
            )
        ckpt = _load_pickled(path, objects, allow_pickle)
    except Exception as e:
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})"
        )
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{path}: no 'state_dict' in the checkpoint")
    meta = ckpt.get("meta", {})
    return state, meta if isinstance(meta, dict) else {}


def _check_integral_buffer(value, reg_max: int) -> None:
    """The saved bins must be 0..n, the only layout gfl-d2's integral computes."""
    expected = torch.arange(reg_max + 1, dtype=torch.float32)
    if not torch.is_tensor(value):
        raise ConversionError(f"{INTEGRAL_BUFFER!r} is not a tensor ({type(value).__name__})")
    if value.shape == expected.shape and torch.equal(value.detach().float().cpu(), expected):
        return
    shown = value.flatten()[:20].tolist()
    raise ConversionError(
        f"{INTEGRAL_BUFFER!r} holds the bin values {shown}{' ...' if value.numel() > 20 else ''} "
        f"(shape {tuple(value.shape)}), but bbox_head.gfl_reg's {4 * (reg_max + 1)} "
        "output channels mean "
        f"n = {reg_max} and bins 0, 1, ..., {reg_max}: "
        "this checkpoint was trained with another bin layout, "
        "which gfl-d2's integral does not compute"
    )


def convert_mmdet_state_dict(
    state_dict: Dict[str, torch.Tensor], meta: Optional[Dict] = None
) -> Tuple["OrderedDict[str, torch.Tensor]", Dict]:
    """
    Args:
        state_dict: MMDetection GFL (V1 or V2) ``state_dict``.
        meta: the checkpoint's ``meta``, if any.

    Returns:
        (converted state dict, info): ``info`` has the architecture
        (:func:`describe_mmdet_gfl`), the mapping ``{mmdet key: our key}`` and
        ``dropped``, ``{mmdet key: why}`` for what was deliberately left out:
        BatchNorm's ``num_batches_tracked``, the integral's bin values
        (checked to be 0..n first) and, for V2, the background channel of
        ``gfl_cls`` (``gfl_cls[<num_classes>]``).
    """
    info = describe_mmdet_gfl(state_dict, meta)
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    mapping, dropped = {}, {}
    res2net = info["kind"] == "res2net"
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            dropped[key] = "BatchNorm counter (frozen BN keeps none)"
            continue
        if key == INTEGRAL_BUFFER:
            _check_integral_buffer(value, info["reg_max"])
            dropped[key] = f"the integral's bins 0..{info['reg_max']} (gfl-d2 computes them from n)"
            continue
        if not torch.is_tensor(value):
            raise ConversionError(f"{key!r} is not a tensor ({type(value).__name__})")
        new_key = _rename(key, res2net)
        if new_key in converted:
            raise ConversionError(f"two keys map to {new_key!r}")
        if info["version"] == 2 and key.startswith("bbox_head.gfl_cls."):
            value = value[: info["num_classes"]]
            dropped[f"{key}[{info['num_classes']}]"] = (
                "GFL V2's background channel of gfl_cls "
                "(use_sigmoid=False; trained towards 0, no class)"
            )
        converted[new_key] = value.detach().clone()
        mapping[key] = new_key
    info.update(mapping=mapping, dropped=dropped)
    return converted, info


def conversion_report(src: str, info: Dict, verbose: bool = False) -> List[str]:
    """What was recognised, mapped and dropped, as lines to print."""
    backbone = backbone_name(info)
    lines = [
        f"{src}: GFL{' V2' if info['version'] == 2 else ''}, {backbone} + FPN "
        f"({info['fpn_channels']} channels, "
        f"P3-P7), head of {info['num_convs']} convs, {info['num_classes']} classes, "
        f"reg_max {info['reg_max']}"
    ]
    if info["version"] == 2:
        lines.append(
            f"  distribution-guided quality predictor: {info['dgqp_statistics']} statistics -> "
            f"{info['dgqp_channels']} -> 1 "
            "(the V2 configs: dgqp_topk=4 with the mean = 20, dgqp_channels=64)"
        )
    groups: Dict[str, List[Tuple[str, str]]] = {}
    for old, new in info["mapping"].items():
        groups.setdefault(old.split(".")[0], []).append((old, new))
    for prefix, pairs in groups.items():
        lines.append(f"  {prefix}: {len(pairs)} tensors, e.g. {pairs[0][0]} -> {pairs[0][1]}")
        lines += [f"    {old} -> {new}" for old, new in pairs] if verbose else []
    reasons: Dict[str, List[str]] = {}
    for key, why in info["dropped"].items():
        reasons.setdefault(why, []).append(key)
    lines += [
        f"  dropped {keys[0] if len(keys) == 1 else f'{len(keys)} tensors'}: {why}"
        for why, keys in reasons.items()
    ]
    return lines


class ConversionReport(list):
    """
    The report's lines (what was recognised, mapped and dropped, which config to
    use), with the same facts as data: ``config`` (the config to use, relative to
    ``configs/``), ``overrides`` (what that config needs changed, ``key=value``)
    and ``info`` (from :func:`describe_mmdet_gfl`).
    """

    def __init__(self, lines: List[str], config: str, overrides: List[str], info: Dict):
        super().__init__(lines)
        self.config, self.overrides, self.info = config, overrides, info


def _write_atomically(state: Dict, meta: Dict, dst: str, num_classes: Optional[int] = None) -> None:
    """
    ``{"model": state}`` to ``dst``, never a half-written file; with the model's
    ``num_classes`` where it has a head (what a class change needs to know of
    a layer that the classes share with the box outputs).
    """
    out_dir = os.path.dirname(os.path.abspath(dst))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    os.close(fd)
    try:
        payload = {
            "model": state,
            "__author__": "gfl-d2 convert_mmdet_checkpoint",
            "mmdet_meta_keys": sorted(meta),
        }
        if num_classes is not None:
            payload["num_classes"] = int(num_classes)
        torch.save(payload, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _configs_of(info: Dict) -> List[str]:
    """The configs whose backbone has this ImageNet network's architecture."""
    arch = (info["kind"], info["depth"], info["num_groups"])
    return sorted({config for key, config in _CONFIGS.items() if key[1:4] == arch})


def _convert_backbone_checkpoint(src, dst, state, meta) -> ConversionReport:
    """An ImageNet backbone -> ``train.init_checkpoint`` of the configs with its architecture."""
    converted, info = convert_backbone_state_dict(state)
    configs = _configs_of(info)
    if not configs:
        raise ConversionError(
            f"{src}: an ImageNet {backbone_name(info)}: no gfl-d2 config uses this backbone"
        )
    _write_atomically(converted, meta, dst)
    dropped = sorted(set(info["dropped"].values()))
    lines = [
        f"{src}: ImageNet {backbone_name(info)} (backbone only): {len(converted)} tensors "
        f"-> backbone.bottom_up.*; dropped: {', '.join(dropped) or 'nothing'}",
        f"wrote {dst}; start training with train.init_checkpoint={dst} in "
        + ", ".join(f"configs/{c}" for c in configs)
        + " (deformable configs: offset convs start at zero)",
    ]
    return ConversionReport(lines, configs[0], [f"train.init_checkpoint={dst}"], info)


def _convert_nanodet_checkpoint(src, dst, state, meta) -> ConversionReport:
    """A NanoDet-Plus checkpoint -> the NanoDet config of its size (either input size)."""
    converted, info = convert_nanodet_state_dict(state)
    _write_atomically(converted, meta, dst, info["num_classes"])
    configs = [info["config"].format(size) for size in (320, 416)]
    overrides = [f"model.num_classes={info['num_classes']}"] if info["num_classes"] != 80 else []
    if info["reg_max"] != 7:
        overrides.append(f"model.head.box2box_transform.reg_max={info['reg_max']}")
    reasons = sorted(set(info["dropped"].values()))
    aux = sum(k.startswith(("aux_neck.", "aux_head.")) for k in converted)
    lines = [
        f"{src}: {info['name']} (NanoDet), {info['num_classes']} classes, reg_max "
        f"{info['reg_max']}: {len(converted)} tensors from {info['source']}"
        + (
            f" ({aux} of the training-only auxiliary head and neck copy, for fine-tuning)"
            if aux
            else ""
        )
        + "; dropped: "
        + "; ".join(reasons),
        f"wrote {len(converted)} tensors to {dst}; use it with configs/{configs[0]} "
        f"(or configs/{configs[1]}: the same weights at 416)"
        + "".join(f" and {o}" for o in overrides),
    ]
    return ConversionReport(lines, configs[0], overrides, info)


def convert_checkpoint(
    src: str, dst: str, allow_pickle: bool = False, verbose: bool = False
) -> ConversionReport:
    """
    Convert the MMDetection GFL checkpoint ``src`` into a detectron2
    checkpoint ``dst`` (``{"model": state_dict}``), written atomically: never
    a half-written file. Raises ConversionError with the reason.

    Returns:
        the report: what was recognised, mapped and dropped, and which config to use.
    """
    state, meta = load_mmdet_checkpoint(src, allow_pickle=allow_pickle)
    if is_nanodet(state):
        return _convert_nanodet_checkpoint(src, dst, state, meta)
    if is_backbone_only(state):
        return _convert_backbone_checkpoint(src, dst, state, meta)
    converted, info = convert_mmdet_state_dict(state, meta)
    lines = conversion_report(src, info, verbose)
    _write_atomically(converted, meta, dst, info["num_classes"])
    overrides = [f"model.num_classes={info['num_classes']}"] if info["num_classes"] != 80 else []
    overrides += info["overrides"]
    if info["reg_max"] != 16:
        overrides.append(f"model.head.box2box_transform.reg_max={info['reg_max']}")
    extra = "".join(f" and {o}" for o in overrides)
    last = f"wrote {len(converted)} tensors to {dst}; use it with configs/{info['config']}{extra}"
    return ConversionReport(lines + [last], info["config"], overrides, info)
