"""
A reference decoder of GFL's raw outputs (:mod:`gfl_d2.raw_outputs`) in NumPy
alone, for deployments without PyTorch: the model's own inference step by step
(per-level score threshold and top-k, the integral of the edge distributions,
clipping, class-aware NMS, the best detections).
"""

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["decode", "nms", "level_points"]


def level_points(height: int, width: int, strides: List[int], offset: float) -> List[np.ndarray]:
    """Per level, the (H/s * W/s, 2) points (x, y), row-major, of an H x W input."""
    points = []
    for s in strides:
        ys, xs = np.meshgrid(np.arange(-(-height // s)), np.arange(-(-width // s)), indexing="ij")
        points.append(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) + offset)
        points[-1] *= s
    return points


def _edge_distances(bins: np.ndarray, reg_max: int, bin_width: float) -> np.ndarray:
    """(K, 4 (n + 1)) logits -> (K, 4) expected distances in bins' units."""
    logits = bins.reshape(-1, 4, reg_max + 1).astype(np.float32)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return (probs * (np.arange(reg_max + 1, dtype=np.float32) * bin_width)).sum(axis=-1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: kept indices by decreasing score; a box with IoU > t with a kept one goes."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def _level_candidates(raw, points, stride, layout) -> Tuple[np.ndarray, ...]:
    """One level's (boxes, scores, classes) over the threshold, at most the top-k."""
    c = layout["num_classes"]
    scores = raw[:, :c]
    loc, cls = np.nonzero(scores > layout["score_thresh"])
    s = scores[loc, cls]
    order = np.argsort(-s, kind="stable")[: layout["topk_candidates"]]
    loc, cls, s = loc[order], cls[order], s[order]
    d = _edge_distances(raw[loc, c:], layout["reg_max"], layout["bin_width"]) * stride
    p = points[loc]
    return np.concatenate([p - d[:, :2], p + d[:, 2:]], axis=1), s, cls


def decode(raw: np.ndarray, image_size: Tuple[int, int], layout: Dict) -> Dict[str, np.ndarray]:
    """
    Args:
        raw: (P, C + 4 (n + 1)) one image's raw outputs.
        image_size: (H, W) of the network input (the image the boxes are clipped to).
        layout: :attr:`gfl_d2.raw_outputs.RawOutputs.layout`.

    Returns:
        ``boxes`` (K, 4) x0 y0 x1 y1 in input pixels, ``scores`` (K,), ``classes`` (K,).
    """
    h, w = image_size
    pad = layout["size_divisibility"]
    padded = (-(-h // pad) * pad, -(-w // pad) * pad)
    points = level_points(*padded, layout["strides"], layout["point_offset"])
    levels, start = [], 0
    for p, s in zip(points, layout["strides"]):
        levels.append(_level_candidates(raw[start : start + len(p)], p, s, layout))
        start += len(p)
    boxes, scores, classes = (np.concatenate(x) for x in zip(*levels))
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, classes = boxes[valid], scores[valid], classes[valid]
    shift = classes[:, None].astype(np.float64) * (max(h, w) + 1)  # one NMS, classes apart
    keep = nms(boxes + shift, scores, layout["nms_thresh"])[: layout["max_detections"]]
    return dict(boxes=boxes[keep], scores=scores[keep], classes=classes[keep])
