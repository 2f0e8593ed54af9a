"""
Conversion of GFL checkpoints in MMDetection's format (MMDetection v2/v3 model
zoo, the authors' release) to this package's detectron2 model.

Supported: ResNet-50/101 and ResNeXt-101 (any groups x width) pytorch-style
backbones, FPN with P6/P7 from P5's output, the GFL head. Anything else (DCN
backbones, other necks or heads) is refused with the reason.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

__all__ = ["ConversionError", "convert_mmdet_state_dict", "describe_mmdet_gfl"]


class ConversionError(ValueError):
    """The checkpoint is not one this converter understands."""


# keys renamed by a plain pattern; the structured ones are handled in _rename
_RULES: List[Tuple[str, str]] = [
    (r"^backbone\.conv1\.weight$", "backbone.bottom_up.stem.conv1.weight"),
    (r"^backbone\.bn1\.(weight|bias|running_mean|running_var)$", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (r"^bbox_head\.gfl_cls\.(weight|bias)$", r"head.cls_score.\1"),
    (r"^bbox_head\.gfl_reg\.(weight|bias)$", r"head.bbox_pred.\1"),
    (r"^bbox_head\.scales\.(\d)\.scale$", r"head.scales.\1.scale"),
]


def _rename(key: str) -> str:
    """mmdet key -> detectron2 key; ConversionError for a key of unknown meaning."""
    m = re.match(r"^backbone\.layer(\d)\.(\d+)\.(.*)$", key)
    if m:
        stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
        rest = re.sub(r"^conv(\d)\.weight$", r"conv\1.weight", rest)
        rest = re.sub(r"^bn(\d)\.(.*)$", r"conv\1.norm.\2", rest)
        rest = re.sub(r"^downsample\.0\.weight$", "shortcut.weight", rest)
        rest = re.sub(r"^downsample\.1\.(.*)$", r"shortcut.norm.\1", rest)
        if not re.match(r"^(conv\d\.(weight|norm\.(weight|bias|running_mean|running_var))|shortcut\.(weight|norm\..*))$", rest):
            raise ConversionError(f"unexpected backbone key {key!r}")
        return f"backbone.bottom_up.res{stage}.{block}.{rest}"
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
            raise ConversionError(f"{key!r}: the head's tower convs have no bias in GFL (GN follows them)")
        return f"head.{tower}.{index}.{m.group(4)}"
    for pattern, target in _RULES:
        if re.match(pattern, key):
            return re.sub(pattern, target, key)
    raise ConversionError(f"key {key!r} has no counterpart in gfl-d2's GFL")


def describe_mmdet_gfl(state_dict: Dict[str, torch.Tensor]) -> Dict:
    """
    Recognise a GFL checkpoint and read its architecture off the tensor shapes.

    Returns:
        dict with depth, num_groups, width_per_group, num_classes, reg_max,
        num_convs, fpn_channels, and the matching config file.
    """
    keys = set(state_dict)
    if not any(k.startswith("backbone.") for k in keys):
        raise ConversionError("no 'backbone.*' keys: not an MMDetection detector checkpoint")
    if any("conv_offset" in k or ".dcn" in k or "deform" in k for k in keys):
        raise ConversionError(
            "this checkpoint uses deformable convolutions (DCN), which need detectron2's compiled ops: "
            "not supported by this converter"
        )
    if "bbox_head.gfl_cls.weight" not in keys or "bbox_head.gfl_reg.weight" not in keys:
        heads = sorted({k.split(".")[1] for k in keys if k.startswith("bbox_head.")})
        raise ConversionError(f"not a GFL checkpoint: its head has {heads}, not gfl_cls/gfl_reg")
    if not any(k.startswith("neck.lateral_convs.") for k in keys):
        raise ConversionError("not an FPN neck (no neck.lateral_convs.*)")
    if "backbone.conv1.weight" not in keys or "backbone.layer1.0.conv3.weight" not in keys:
        raise ConversionError("the backbone is not a ResNet/ResNeXt with bottleneck blocks (ResNet-50 or deeper)")

    blocks = [len({k.split(".")[2] for k in keys if k.startswith(f"backbone.layer{i}.")}) for i in range(1, 5)]
    depth = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}.get(tuple(blocks))
    if depth is None:
        raise ConversionError(f"unknown ResNet layout {blocks} blocks per stage")
    conv2 = state_dict["backbone.layer1.0.conv2.weight"]
    bottleneck = conv2.shape[0]
    num_groups = bottleneck // conv2.shape[1]
    width_per_group = conv2.shape[1] if num_groups > 1 else 64
    gfl_reg = state_dict["bbox_head.gfl_reg.weight"]
    if gfl_reg.shape[0] % 4:
        raise ConversionError(f"bbox_head.gfl_reg has {gfl_reg.shape[0]} channels, not 4 * (n+1)")
    num_fpn = len({k.split(".")[2] for k in keys if k.startswith("neck.fpn_convs.")})
    if num_fpn != 5:
        raise ConversionError(f"the FPN has {num_fpn} output convs; GFL's has 5 (P3-P7, P6/P7 from P5)")
    p6_in = state_dict["neck.fpn_convs.3.conv.weight"].shape[1]
    fpn_channels = state_dict["neck.fpn_convs.0.conv.weight"].shape[0]
    if p6_in != fpn_channels:
        raise ConversionError(
            f"P6 is computed from {p6_in} channels: the FPN's extra convs are not 'on_output' (P5's output)"
        )
    num_convs = len({k.split(".")[2] for k in keys if k.startswith("bbox_head.cls_convs.")})
    if num_groups > 1:
        config = f"COCO-Detection/gfl_X_{depth}_{num_groups}x{width_per_group}d_FPN_ms2x.py"
    else:
        config = "COCO-Detection/gfl_R_50_FPN_1x.py" if depth == 50 else f"COCO-Detection/gfl_R_{depth}_FPN_ms2x.py"
    return dict(
        depth=depth,
        num_groups=num_groups,
        width_per_group=width_per_group,
        num_classes=int(state_dict["bbox_head.gfl_cls.weight"].shape[0]),
        reg_max=int(gfl_reg.shape[0] // 4 - 1),
        num_convs=num_convs,
        fpn_channels=int(fpn_channels),
        config=config,
    )


def convert_mmdet_state_dict(state_dict: Dict[str, torch.Tensor]) -> Tuple["OrderedDict[str, torch.Tensor]", Dict]:
    """
    Args:
        state_dict: MMDetection GFL ``state_dict``.

    Returns:
        (converted state dict, info): ``info`` has the architecture
        (:func:`describe_mmdet_gfl`), the mapping ``{mmdet key: our key}`` and
        the keys deliberately dropped (BatchNorm's ``num_batches_tracked``).
    """
    info = describe_mmdet_gfl(state_dict)
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    mapping, dropped = {}, []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            dropped.append(key)  # frozen BN keeps no counter
            continue
        if not torch.is_tensor(value):
            raise ConversionError(f"{key!r} is not a tensor ({type(value).__name__})")
        new_key = _rename(key)
        if new_key in converted:
            raise ConversionError(f"two keys map to {new_key!r}")
        converted[new_key] = value.detach().clone()
        mapping[key] = new_key
    info.update(mapping=mapping, dropped=dropped)
    return converted, info
