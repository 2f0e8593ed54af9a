"""
Float32 CPU inference with the convolutions of detectron2's ResNet fused for
oneDNN, in eager PyTorch: each convolution of a bottleneck or basic block and
of the stem carries its frozen batch norm in its weights and bias, and oneDNN
applies the ReLU, and a block's residual addition and last ReLU, to the
convolution's output while it writes it (``torch.ops.mkldnn._convolution_pointwise``,
the operator torch.compile's CPU backend uses for the same fusion), so that
no activation is read and written again for them. Everything runs in
channels-last layout, which oneDNN's convolutions take without conversion.

:func:`fuse_convolutions` makes the fused copy of a module (and runs the
convolutions outside the blocks through oneDNN too);
:class:`FusedCPUInference` keeps one of a detector's backbone and head,
rebuilt whenever a weight changes. A block whose normalisation cannot be
folded (GroupNorm, batch norm in training) or whose convolutions carry their
own activation stays as it is, in channels-last layout. The outputs equal the
module's up to float32 rounding (folding changes the order of the
multiplications).
"""

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock
from torch import Tensor, nn

__all__ = ["FusedConv", "fuse_convolutions", "FusedCPUInference"]


def _foldable(conv: nn.Module) -> bool:
    """
    A torch or detectron2 Conv2d (not a subclass with another forward) with no
    activation of its own whose norm, if any, folds into it (frozen or eval batch norm).
    """
    norm = getattr(conv, "norm", None)
    frozen_bn = isinstance(norm, FrozenBatchNorm2d) or (
        isinstance(norm, nn.BatchNorm2d) and not norm.training
    )
    return (
        type(conv) in (nn.Conv2d, Conv2d)
        and conv.padding_mode == "zeros"
        and getattr(conv, "activation", None) is None
        and (norm is None or frozen_bn)
    )


class FusedConv(nn.Module):
    """
    A torch or detectron2 ``Conv2d`` with its batch norm, if any, folded in: (N, C, H, W) ->
    (N, C', H', W'), channels-last, computed by oneDNN with the ReLU or the
    residual addition applied on the way out.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach()
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(len(weight))
        norm = getattr(conv, "norm", None)
        if norm is not None:  # y = (conv(x) - mean) * scale + beta
            scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
            weight = weight * scale[:, None, None, None]
            bias = (bias - norm.running_mean) * scale + norm.bias
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.contiguous())
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def forward(self, x: Tensor, activation: str = "none") -> Tensor:
        """``activation``: "none" or "relu"."""
        op = torch.ops.mkldnn._convolution_pointwise
        return op(x, self.weight, self.bias, *self.geometry, activation, [], "")

    def add_relu(self, x: Tensor, residual: Tensor) -> Tensor:
        """relu(conv(x) + residual), ``residual`` shaped as the output."""
        op = torch.ops.mkldnn._convolution_pointwise.binary
        return op(x, residual, self.weight, self.bias, *self.geometry, "add", 1.0, "relu", [], "")


class _FusedBlock(nn.Module):
    """A bottleneck (three convolutions) or basic block (two): ReLUs and the residual fused."""

    def __init__(self, convs: Sequence[nn.Module], shortcut: Optional[nn.Module]):
        super().__init__()
        self.convs = nn.ModuleList(FusedConv(c) for c in convs)
        self.shortcut = FusedConv(shortcut) if shortcut is not None else None

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut(x) if self.shortcut is not None else x
        out = x
        for conv in self.convs[:-1]:
            out = conv(out, "relu")
        return self.convs[-1].add_relu(out, residual)


class _FusedStem(nn.Module):
    """detectron2's BasicStem: the 7x7 convolution with its ReLU, then the 3x3 max pooling."""

    def __init__(self, stem: BasicStem):
        super().__init__()
        self.conv1 = FusedConv(stem.conv1)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.conv1(x, "relu"), kernel_size=3, stride=2, padding=1)


def _fused(module: nn.Module) -> Optional[nn.Module]:
    """The fused stand-in of a block or stem whose convolutions all fold, else None."""
    # exact types: a subclass may compute something else
    if type(module) is BasicStem and _foldable(module.conv1):
        return _FusedStem(module)
    if type(module) in (BottleneckBlock, BasicBlock):
        convs = [module.conv1, module.conv2] + ([module.conv3] if hasattr(module, "conv3") else [])
        shortcut = [module.shortcut] if module.shortcut is not None else []
        if all(_foldable(c) for c in convs + shortcut):
            return _FusedBlock(convs, module.shortcut)
    return None


def fuse_convolutions(module: nn.Module) -> Tuple[nn.Module, int]:
    """
    A channels-last copy of ``module`` in eval mode (``module`` is left as it
    is) with its ResNet stem and blocks fused where they fold, and every other
    convolution that folds run by oneDNN as a :class:`FusedConv` (torch's own
    dispatch sends some, 1x1 or on small inputs, to a slower kernel); and how
    many stems and blocks were fused. Without oneDNN, the plain copy.
    """
    fused = copy.deepcopy(module).eval().to(memory_format=torch.channels_last)
    if not torch.backends.mkldnn.is_available():
        return fused, 0
    replaced: Dict[int, nn.Module] = {}
    for stand_in_for in (_fused, lambda m: FusedConv(m) if _foldable(m) else None):
        for parent in list(fused.modules()):
            for name, child in list(parent.named_children()):
                stand_in = stand_in_for(child)
                if stand_in is not None:
                    setattr(parent, name, stand_in)
                    replaced[id(child)] = stand_in
    _replace_in_lists(fused, replaced)
    return fused, sum(isinstance(m, (_FusedBlock, _FusedStem)) for m in replaced.values())


def _replace_in_lists(root: nn.Module, replaced: Dict[int, nn.Module]) -> None:
    """
    The stand-ins also in the plain lists a module keeps its children in
    (detectron2's FPN calls its convolutions from such lists).
    """
    for module in root.modules():
        for name, value in vars(module).items():
            if isinstance(value, (list, tuple)) and any(id(v) in replaced for v in value):
                setattr(module, name, type(value)(replaced.get(id(v), v) for v in value))


class FusedCPUInference:
    """
    ``(features, predictions)`` of a detector's backbone and head, computed by
    their fused channels-last copies, built on first use and again whenever a
    parameter or buffer of the originals changes.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, in_features: Sequence[str]):
        self._originals = nn.ModuleList([backbone, head])
        self.in_features = list(in_features)
        self._key: Optional[Tuple] = None
        self.fused_blocks = 0

    def _state_key(self) -> Tuple:
        """Changes whenever a parameter or buffer of the originals is replaced or modified."""
        tensors = (*self._originals.parameters(), *self._originals.buffers())
        return tuple((id(t), t._version) for t in tensors)

    def __call__(self, x: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        """(N, 3, H, W) images -> the backbone's features for the head, the head's outputs."""
        key = self._state_key()
        if key != self._key:
            self._fused, self.fused_blocks = fuse_convolutions(self._originals)
            self._key = key
        backbone, head = self._fused
        features = backbone(x.contiguous(memory_format=torch.channels_last))
        features = [features[f] for f in self.in_features]
        return features, head(features)
