"""
GFL's per-location detections before any selection: every location's box,
decoded from its edge distributions, and its class scores; what remains for a
deployment is the selection (score threshold, top-k, NMS), which
:func:`gfl_d2.edge_decoder.select` does in NumPy (or ONNX NonMaxSuppression
appended to the graph). Two tensors per batch:

- ``boxes`` (N, P, 4): x0, y0, x1, y1 in input pixels, each location's point
  minus / plus its expected edge distances (the integral of the softmax over
  the bins, times the level's stride), clipped to the input image as the model
  clips its detections;
- ``scores`` (N, P, C): the class probabilities (times the quality for a model
  with one, GFL V2), as the model ranks them.

The P locations are those of :mod:`gfl_d2.raw_outputs`: the levels fine to
coarse, each row-major over its grid.
"""

from typing import List, Tuple

import torch
from detectron2.layers.wrappers import shapes_to_tensor
from torch import Tensor, nn
from torch.nn import functional as F

from .raw_outputs import RawOutputs, level_outputs

__all__ = ["DecodedOutputs", "level_points"]


def level_points(height: Tensor, width: Tensor, stride: int, offset: float) -> Tensor:
    """
    (H * W, 2) points (x, y) of a level's H x W grid, row-major: ((x + offset) s, (y + offset) s).
    ``height`` and ``width`` may be traced sizes (an export keeps them dynamic).
    """
    ys = (torch.arange(height, dtype=torch.float32) + offset) * stride
    xs = (torch.arange(width, dtype=torch.float32) + offset) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


class DecodedOutputs(nn.Module):
    """
    A GFL model's decoded per-location outputs: ``forward(images)`` with images
    (N, 3, H, W), float, 0-255 in the model's input format, H and W multiples of
    the model's padding -> ``boxes`` (N, P, 4) and ``scores`` (N, P, C) as the
    module docstring lays them out. ``layout`` (that of
    :class:`~gfl_d2.raw_outputs.RawOutputs`) holds what the selection needs.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.layout = RawOutputs(model).layout  # refuses models without distributions
        self.model = model

    def _distances(self, box_regs: List[Tensor]) -> Tensor:
        """Per level (N, 4 (n + 1), H_l, W_l) logits -> (N, P, 4) expected edges, in strides."""
        regs = torch.cat([r.flatten(2) for r in box_regs], dim=2).transpose(1, 2)
        probs = F.softmax(regs.float().unflatten(-1, (4, -1)), dim=-1)  # (N, P, 4, n + 1)
        bins = torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)
        # a product with a (n + 1, 1) matrix: ONNX Runtime runs it as one GEMM; with a vector
        # (n + 1,) as N P 4 tiny products, 20x slower
        return (probs @ (bins * self.layout["bin_width"])[:, None]).squeeze(-1)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        levels = level_outputs(self.model, images)
        strides, offset = self.layout["strides"], self.layout["point_offset"]
        points, point_strides = [], []
        for (scores, _), stride in zip(levels, strides):
            h, w = scores.shape[-2:]
            points.append(level_points(h, w, stride, offset))
            point_strides.append(torch.full_like(points[-1][:, :1], float(stride)))
        points = torch.cat(points).to(images.device)  # (P, 2)
        distances = self._distances([regs for _, regs in levels]) * torch.cat(point_strides).to(
            images.device
        )
        boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
        # the model clips to the image: x to [0, W], y to [0, H] (an export keeps H, W dynamic)
        h, w = images.shape[-2:]
        limits = shapes_to_tensor([w, h, w, h], boxes.device).to(boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        scores = torch.cat([s.flatten(2) for s, _ in levels], dim=2).transpose(1, 2)
        return boxes, scores
