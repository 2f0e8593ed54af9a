"""
The backbones of MMDetection-format checkpoints, read off their keys and
shapes and renamed to detectron2's: ResNet-18/34 (basic blocks), ResNet-50+
and ResNeXt (bottlenecks), Res2Net-v1d (the deep stem, ``convs``/``bns``
splits, average-pool shortcuts), each with deformable 3x3 convolutions where
the checkpoint has offset convs (mmcv's ``DCN``, v1: 2 * 9 channels per
offset group; ``DCNv2``, modulated: 3 * 9).

Keys are relative to the backbone (``conv1.weight``, ``layer3.0.conv2.conv_offset.bias``),
as in an ImageNet checkpoint, or after the detector's ``backbone.``.
"""

import re
from typing import Dict, List

import torch

from .errors import UsageError

__all__ = [
    "ConversionError",
    "describe_backbone",
    "rename_backbone_key",
    "backbone_name",
    "is_backbone_only",
    "convert_backbone_state_dict",
    "rename_shufflenet_key",
]


class ConversionError(UsageError, ValueError):
    """The checkpoint is not one this converter understands."""


_BN = r"(weight|bias|running_mean|running_var)"
_RESNET_BLOCKS = {
    "basic": {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34},
    "bottleneck": {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152},
}
# the deep stem's Sequential: conv, BN, ReLU three times
_STEM = {"0": "conv1", "1": "conv1.norm", "3": "conv2", "4": "conv2.norm", "6": "conv3"}
_STEM["7"] = "conv3.norm"
# within a block, mmdet's name -> detectron2's; ``S`` is the split index of Res2Net's convs
_BLOCK_RULES = [
    (r"^conv(\d)\.weight$", r"conv\1.weight"),
    (rf"^bn(\d)\.{_BN}$", r"conv\1.norm.\2"),
    (r"^conv2\.conv_offset\.(weight|bias)$", r"conv2_offset.\1"),
    (r"^conv2_offset\.(weight|bias)$", r"conv2_offset.\1"),  # mmdet 1.x's name
    (r"^convs\.(\d+)\.weight$", r"convs.\1.weight"),
    (r"^convs\.(\d+)\.conv_offset\.(weight|bias)$", r"convs_offset.\1.\2"),
    (rf"^bns\.(\d+)\.{_BN}$", r"convs.\1.norm.\2"),
]


def _strip(key: str) -> str:
    return key[len("backbone.") :] if key.startswith("backbone.") else key


def _blocks_per_stage(keys) -> List[int]:
    return [len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.")}) for i in range(1, 5)]


def _offset_convs(state_dict: Dict[str, torch.Tensor], stage: int) -> Dict[str, torch.Tensor]:
    """{block prefix: offset conv weight} of ``layer{stage}``'s deformable convs."""
    found = {}
    for key, value in state_dict.items():
        m = re.match(
            rf"^layer{stage}\.(\d+\.(conv2|convs\.\d+))(\.conv_offset|_offset)\.weight$", key
        )
        if m:
            found[m.group(1)] = value
    return found


def _describe_deform(state_dict, blocks: List[int], splits: int) -> Dict:
    """
    The stages with deformable convs (every block's, as mmdet's ``stage_with_dcn``),
    v1 or modulated, and the offset groups, from the offset convs' output channels.
    """
    on, channels = [], set()
    for stage, n in enumerate(blocks, start=1):
        offsets = _offset_convs(state_dict, stage)
        if offsets and len(offsets) != n * splits:
            raise ConversionError(
                f"layer{stage} has deformable convs in {len(offsets)} of its {n * splits} "
                "3x3 convs; only whole stages are (mmdet's stage_with_dcn, detectron2's "
                "DEFORM_ON_PER_STAGE)"
            )
        on.append(bool(offsets))
        channels |= {int(v.shape[0]) for v in offsets.values()}
    if not channels:
        return dict(deform_on_per_stage=on, deform_modulated=False, deform_num_groups=1)
    if len(channels) > 1:
        raise ConversionError(f"the offset convs differ in width: {sorted(channels)} channels")
    c = channels.pop()
    v1, modulated = c % 18 == 0, c % 27 == 0
    if v1 == modulated:
        raise ConversionError(
            f"offset convs of {c} channels: neither 2 * 9 (DCN v1) nor 3 * 9 (modulated) per "
            "offset group, or both"
        )
    return dict(
        deform_on_per_stage=on,
        deform_modulated=modulated,
        deform_num_groups=c // (27 if modulated else 18),
    )


def describe_backbone(state_dict: Dict[str, torch.Tensor]) -> Dict:
    """
    Args:
        state_dict: a backbone's tensors (keys with or without ``backbone.``).

    Returns:
        dict with ``kind`` ("resnet" or "res2net"), ``depth``, ``block``
        ("basic" or "bottleneck"), ``num_groups``, ``width_per_group``,
        ``scales`` and ``base_width`` (Res2Net), and the deformable switches
        ``deform_on_per_stage``, ``deform_modulated``, ``deform_num_groups``.
    """
    sd = {_strip(k): v for k, v in state_dict.items()}
    res2net = "stem.0.weight" in sd
    if res2net and "layer1.0.convs.0.weight" not in sd:
        raise ConversionError(
            "a deep-stem ResNet (ResNet-v1c/v1d) without Res2Net's split convs: no GFL release "
            "uses one, and gfl-d2 has no config for it"
        )
    if not res2net and "conv1.weight" not in sd:
        raise ConversionError("no stem (conv1.weight or stem.0.weight): not a ResNet backbone")
    blocks = _blocks_per_stage(sd)
    block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    depth = _RESNET_BLOCKS[block].get(tuple(blocks))
    if depth is None:
        raise ConversionError(f"unknown ResNet layout: {blocks} {block} blocks per stage")
    info = dict(kind="res2net" if res2net else "resnet", depth=depth, block=block)
    if res2net:
        splits = len({k.split(".")[3] for k in sd if k.startswith("layer1.0.convs.")})
        info.update(scales=splits + 1, base_width=int(sd["layer1.0.convs.0.weight"].shape[0]))
        info.update(num_groups=1, width_per_group=64)
    else:
        splits = 1
        conv2 = sd["layer1.0.conv2.weight"]
        groups = conv2.shape[0] // conv2.shape[1] if block == "bottleneck" else 1
        info.update(
            num_groups=int(groups), width_per_group=int(conv2.shape[1]) if groups > 1 else 64
        )
    info.update(_describe_deform(sd, blocks, splits))
    if block == "basic" and any(info["deform_on_per_stage"]):
        raise ConversionError(
            "deformable convs in basic blocks (ResNet-18/34): no release has them"
        )
    return info


def _rename_block(stage: int, block: str, rest: str, res2net: bool) -> str:
    shortcut = (
        [
            (r"^downsample\.1\.weight$", "shortcut.weight"),
            (rf"^downsample\.2\.{_BN}$", r"shortcut.norm.\1"),
        ]
        if res2net
        else [
            (r"^downsample\.0\.weight$", "shortcut.weight"),
            (rf"^downsample\.1\.{_BN}$", r"shortcut.norm.\1"),
        ]
    )
    for pattern, target in _BLOCK_RULES + shortcut:
        if re.match(pattern, rest):
            return f"res{stage + 1}.{block}.{re.sub(pattern, target, rest)}"
    raise ConversionError(f"unexpected backbone key layer{stage}.{block}.{rest}")


def rename_backbone_key(key: str, res2net: bool = False) -> str:
    """
    A backbone key (``conv1.weight``, ``backbone.layer2.0.conv2.conv_offset.bias``,
    ``stem.3.weight``) -> its name in detectron2's ``ResNet`` (``stem.conv1.weight``,
    ``res3.0.conv2_offset.bias``, ``stem.conv2.weight``); ConversionError if it has none.
    """
    rest = _strip(key)
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", rest)
    if m:
        return _rename_block(int(m.group(1)), m.group(2), m.group(3), res2net)
    m = re.match(rf"^stem\.(\d)\.(weight|{_BN[1:-1]})$", rest)
    if res2net and m and m.group(1) in _STEM:
        return f"stem.{_STEM[m.group(1)]}.{m.group(2)}"
    if not res2net and rest == "conv1.weight":
        return "stem.conv1.weight"
    m = re.match(rf"^bn1\.{_BN}$", rest)
    if not res2net and m:
        return f"stem.conv1.norm.{m.group(1)}"
    raise ConversionError(f"backbone key {key!r} has no counterpart in detectron2's ResNet")


def backbone_name(info: Dict) -> str:
    """``ResNet-101``, ``ResNeXt-101 32x4d``, ``Res2Net-101 26w x 4s``, with ``DCN c3-c5`` etc."""
    depth = info["depth"]
    if info["kind"] == "res2net":
        name = f"Res2Net-{depth} {info['base_width']}w x {info['scales']}s"
    elif info["num_groups"] > 1:
        name = f"ResNeXt-{depth} {info['num_groups']}x{info['width_per_group']}d"
    else:
        name = f"ResNet-{depth}"
    stages = [i + 2 for i, on in enumerate(info["deform_on_per_stage"]) if on]
    if stages:
        kind = "modulated DCN" if info["deform_modulated"] else "DCN"
        name += f" + {kind} c{stages[0]}-c{stages[-1]}"
    return name


def is_backbone_only(keys) -> bool:
    """An ImageNet classifier's or a bare backbone's keys: a stem and stages, no detector parts."""
    keys = {_strip(k) for k in keys}
    has_stem = "conv1.weight" in keys or "stem.0.weight" in keys
    detector = any(k.startswith(("neck.", "bbox_head.", "head.")) for k in keys)
    return has_stem and not detector and any(k.startswith("layer1.") for k in keys)


def convert_backbone_state_dict(state_dict: Dict[str, torch.Tensor]):
    """
    An ImageNet ResNet/ResNeXt/Res2Net (torchvision's or MMDetection's key
    layout) -> detectron2's ``backbone.bottom_up.*`` keys, for
    ``train.init_checkpoint``. The classifier (``fc.*``) and BatchNorm's
    counters are dropped; a deformable config's offset convs are not in an
    ImageNet network and keep their zero initialisation.

    Returns:
        (converted state dict, info): :func:`describe_backbone`'s, with
        ``mapping`` and ``dropped`` as the detector conversion's.
    """
    info = describe_backbone(state_dict)
    converted, mapping, dropped = {}, {}, {}
    for key, value in state_dict.items():
        if _strip(key).startswith("fc.") or key.endswith("num_batches_tracked"):
            dropped[key] = "the ImageNet classifier" if "fc." in key else "BatchNorm counter"
            continue
        if not torch.is_tensor(value):
            raise ConversionError(f"{key!r} is not a tensor ({type(value).__name__})")
        new_key = "backbone.bottom_up." + rename_backbone_key(key, info["kind"] == "res2net")
        converted[new_key] = value.detach().clone()
        mapping[key] = new_key
    info.update(mapping=mapping, dropped=dropped)
    return converted, info


# torchvision's and NanoDet's ShuffleNetV2 Sequential indices -> gfl_d2's ShuffleV2Block names
_SHUFFLE_BRANCHES = {
    ("branch1", "0"): "branch1_dw",
    ("branch1", "1"): "branch1_dw.norm",
    ("branch1", "2"): "branch1_pw",
    ("branch1", "3"): "branch1_pw.norm",
    ("branch2", "0"): "branch2_pw1",
    ("branch2", "1"): "branch2_pw1.norm",
    ("branch2", "3"): "branch2_dw",
    ("branch2", "4"): "branch2_dw.norm",
    ("branch2", "5"): "branch2_pw2",
    ("branch2", "6"): "branch2_pw2.norm",
}


def rename_shufflenet_key(key: str) -> str:
    """
    A ShuffleNetV2 key of torchvision or NanoDet (``conv1.1.running_mean``,
    ``stage3.0.branch2.3.weight``; with or without ``backbone.``) -> its name in
    :class:`gfl_d2.modeling.shufflenet.ShuffleNetV2` (``stem.norm.running_mean``,
    ``stage3.0.branch2_dw.weight``); ConversionError if it has none.
    """
    rest = _strip(key)
    m = re.match(rf"^conv1\.([01])\.(weight|{_BN[1:-1]})$", rest)
    if m:
        return f"stem{'' if m.group(1) == '0' else '.norm'}.{m.group(2)}"
    m = re.match(rf"^(stage[234])\.(\d+)\.(branch[12])\.(\d)\.(weight|{_BN[1:-1]})$", rest)
    if m and (m.group(3), m.group(4)) in _SHUFFLE_BRANCHES:
        name = _SHUFFLE_BRANCHES[(m.group(3), m.group(4))]
        return f"{m.group(1)}.{m.group(2)}.{name}.{m.group(5)}"
    raise ConversionError(f"ShuffleNetV2 key {key!r} has no counterpart in gfl-d2's ShuffleNetV2")
