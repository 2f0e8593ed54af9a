"""
A reference decoder of GFL's raw outputs (:mod:`gfl_d2.raw_outputs`) in NumPy
alone, for deployments without PyTorch: the model's own inference step by step
(per-level score threshold and top-k, the integral of the edge distributions,
clipping, class-aware NMS, the best detections). :func:`select` is the
selection alone, for the decoded export's boxes and scores
(:mod:`gfl_d2.decoded_outputs`); :func:`decode` decodes the raw outputs and
selects.
"""

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["decode", "decoded_boxes", "select", "nms", "level_points"]


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


def _level_candidates(scores: np.ndarray, layout: Dict) -> Tuple[np.ndarray, ...]:
    """One level's (P_l, C) scores -> the (location, class, score) over the threshold, top-k."""
    loc, cls = np.nonzero(scores > layout["score_thresh"])
    s = scores[loc, cls]
    order = np.argsort(-s, kind="stable")[: layout["topk_candidates"]]
    return loc[order], cls[order], s[order]


def _padded_size(image_size: Tuple[int, int], layout: Dict) -> Tuple[int, int]:
    """(H, W) of the network input: the image zero-padded to the model's ``size_divisibility``."""
    pad = layout["size_divisibility"]
    return -(-image_size[0] // pad) * pad, -(-image_size[1] // pad) * pad


def decoded_boxes(raw: np.ndarray, input_size: Tuple[int, int], layout: Dict):
    """
    Raw outputs -> what the decoded export (:mod:`gfl_d2.decoded_outputs`) returns.

    Args:
        raw: (P, C + 4 (n + 1)) one image's raw outputs.
        input_size: (H, W) of the network input (padded).

    Returns:
        (P, 4) boxes x0 y0 x1 y1 (not clipped) and (P, C) scores.
    """
    c = layout["num_classes"]
    points = level_points(*input_size, layout["strides"], layout["point_offset"])
    strides = np.concatenate(
        [np.full(len(p), s, np.float32) for p, s in zip(points, layout["strides"])]
    )
    d = _edge_distances(raw[:, c:], layout["reg_max"], layout["bin_width"]) * strides[:, None]
    p = np.concatenate(points)
    return np.concatenate([p - d[:, :2], p + d[:, 2:]], axis=1), raw[:, :c]


def select(boxes: np.ndarray, scores: np.ndarray, image_size: Tuple[int, int], layout: Dict):
    """
    The model's selection on one image's per-location boxes and scores (the
    decoded export's outputs): per level, scores over the threshold and the
    top k; boxes clipped to the image, empty or non-finite ones dropped;
    class-aware NMS; the best ``max_detections``.

    Args:
        boxes: (P, 4) x0 y0 x1 y1, input pixels; scores: (P, C).
        image_size: (H, W) of the image before padding.
        layout: :attr:`gfl_d2.raw_outputs.RawOutputs.layout`.

    Returns:
        ``boxes`` (K, 4), ``scores`` (K,), ``classes`` (K,), by decreasing score.
    """
    h, w = image_size
    sizes = [len(p) for p in level_points(*_padded_size(image_size, layout), layout["strides"], 0)]
    starts = np.cumsum([0] + sizes)
    found = [_level_candidates(scores[a:b], layout) for a, b in zip(starts, starts[1:])]
    loc = np.concatenate([f[0] + a for f, a in zip(found, starts)])
    classes, kept_scores = (np.concatenate([f[i] for f in found]) for i in (1, 2))
    kept = boxes[loc].astype(np.float32)
    finite = np.isfinite(kept).all(axis=1)  # as the model: a non-finite box counts as empty
    kept = np.clip(np.where(finite[:, None], kept, 0), 0, [w, h, w, h]).astype(np.float32)
    valid = (kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])
    kept, kept_scores, classes = kept[valid], kept_scores[valid], classes[valid]
    shift = classes[:, None].astype(np.float64) * (max(h, w) + 1)  # one NMS, classes apart
    keep = nms(kept + shift, kept_scores, layout["nms_thresh"])[: layout["max_detections"]]
    return dict(boxes=kept[keep], scores=kept_scores[keep], classes=classes[keep])


def decode(raw: np.ndarray, image_size: Tuple[int, int], layout: Dict) -> Dict[str, np.ndarray]:
    """
    Args:
        raw: (P, C + 4 (n + 1)) one image's raw outputs.
        image_size: (H, W) of the image before padding (the boxes are clipped to it).
        layout: :attr:`gfl_d2.raw_outputs.RawOutputs.layout`.

    Returns:
        ``boxes`` (K, 4) x0 y0 x1 y1 in input pixels, ``scores`` (K,), ``classes`` (K,).
    """
    boxes, scores = decoded_boxes(raw, _padded_size(image_size, layout), layout)
    return select(boxes, scores, image_size, layout)
