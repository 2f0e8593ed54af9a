"""
GFL's per-location outputs before any selection: what an edge deployment
receives from the network and decodes itself (:mod:`gfl_d2.edge_decoder`, in
NumPy). One tensor per batch, (N, P, C + 4 (n + 1)):

- the P locations: the levels fine to coarse (strides ``layout["strides"]``),
  each row-major over its (H / stride) x (W / stride) grid; location (x, y)
  of a level is the point ((x + offset) * stride, (y + offset) * stride);
- columns 0..C-1: the class scores, probabilities (the sigmoid is applied; for
  a model with a quality predictor, times its quality), as the model ranks them;
- columns C..: the edge distributions' logits, no softmax: left, top, right,
  bottom, n + 1 bins each; an edge's distance is the expected bin
  (softmax, then the sum of bin i * ``bin_width``) times the level's stride.
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from .errors import UsageError

__all__ = ["RawOutputs", "level_outputs"]


class RawOutputs(nn.Module):
    """
    A GFL model's raw outputs: ``forward(images)`` with images (N, 3, H, W),
    float, 0-255 in the model's input format, H and W multiples of the model's
    padding (``size_divisibility``) -> (N, P, C + 4 (n + 1)) as the module
    docstring lays out; ``layout`` says how to decode them.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        transform = model.box2box_transform
        if not transform.has_distributions:
            raise UsageError(
                "raw outputs are laid out for edge distributions; this model regresses "
                "one distance per edge (DiracBox2BoxTransform)"
            )
        self.model = model

    @property
    def layout(self) -> Dict:
        """What a decoder needs: strides, point offset, classes, bins, and the model's settings."""
        m = self.model
        return dict(
            strides=[int(s) for s in m.anchor_generator.strides],
            point_offset=float(m.anchor_generator.offset),
            num_classes=int(m.num_classes),
            reg_max=int(m.box2box_transform.reg_max),
            bin_width=float(m.box2box_transform.bin_width),
            size_divisibility=int(m.backbone.size_divisibility or 1),
            score_thresh=float(m.test_score_thresh),
            topk_candidates=int(m.test_topk_candidates),
            nms_thresh=float(m.test_nms_thresh),
            max_detections=int(m.max_detections_per_image),
        )

    def forward(self, images: Tensor) -> Tensor:
        levels = [
            torch.cat([scores, regs], dim=1).flatten(2)
            for scores, regs in level_outputs(self.model, images)
        ]
        return torch.cat(levels, dim=2).permute(0, 2, 1)


def level_outputs(model: nn.Module, images: Tensor) -> List[Tuple[Tensor, Tensor]]:
    """
    A GFL model's dense outputs, level by level, fine to coarse.

    Args:
        images: (N, 3, H, W) float, 0-255 in the model's input format, H and W
            multiples of its padding (``size_divisibility``).

    Returns:
        per level, (N, C, H_l, W_l) scores (probabilities; times the quality of
        a model with one) and (N, D, H_l, W_l) box outputs.
    """
    divisor = model.backbone.size_divisibility or 1
    if not torch.jit.is_tracing() and (images.shape[-2] % divisor or images.shape[-1] % divisor):
        raise UsageError(
            f"dense outputs need H and W multiples of {divisor}, got {tuple(images.shape[-2:])}"
        )
    features = model.backbone((images - model.pixel_mean) / model.pixel_std)
    cls_logits, box_regs, *quality = model.head([features[f] for f in model.head_in_features])
    levels = []
    for i, (logits, regs) in enumerate(zip(cls_logits, box_regs)):
        scores = logits.sigmoid()
        if quality:  # the quality (ATSS's branch, V2's predictor) multiplies the scores
            scores = scores * quality[0][i].sigmoid()
        levels.append((scores, regs))
    return levels
