"""The pieces of GFL's inference: per-level candidates, clipping, class-aware NMS, the edge std."""

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torchvision
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import log_every_n_seconds
from torch import Tensor

from .box_coding import distance2box

__all__ = [
    "top_candidates",
    "decode_candidates",
    "valid_clipped",
    "class_aware_nms",
    "rescale_box_std",
]


def top_candidates(
    pred_scores: Tensor, score_thresh: float, topk: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    DenseDetector's per-level filtering: (location, class) pairs scoring above
    ``score_thresh``, at most the ``topk`` best.

    Args:
        pred_scores: (R_l, C) scores of a level.

    Returns:
        (K,) scores, descending, and their (K,) location and (K,) class indices.
    """
    keep = pred_scores > score_thresh
    pred_scores = pred_scores[keep]
    candidates = torch.nonzero(keep)  # (K, 2): location, class
    num = candidates.shape[0]
    num_topk = torch.clamp(num, max=topk) if isinstance(num, Tensor) else min(num, topk)
    pred_scores, order = pred_scores.topk(num_topk)
    anchor_idxs, class_idxs = candidates[order].unbind(dim=1)
    return pred_scores, anchor_idxs, class_idxs


def decode_candidates(
    box2box_transform,
    anchors: Boxes,
    stride: int,
    pred_scores: Tensor,
    pred_box_regs: Tensor,
    image_size: Tuple[int, int],
    pred_quality: Optional[Tensor],
    score_thresh: float,
    topk: int,
    with_distributions: bool,
) -> Instances:
    """
    One level's detections before NMS: DenseDetector's filtering (score
    threshold, then the top-k (location, class) pairs), with the kept boxes
    decoded by ``box2box_transform`` (and their edge distributions and quality).

    Args:
        anchors: Boxes (R_l, 4) of the level, whose stride is ``stride``.
        pred_scores: (R_l, C) scores.
        pred_box_regs: (R_l, D) box outputs.
        pred_quality: (R_l, 1) the quality factor of the scores, or None.
        with_distributions: add ``pred_box_dists`` (K, 4, n+1) and
            ``pred_box_std`` (K, 4, input pixels).
    """
    pred_scores, anchor_idxs, classes_idxs = top_candidates(pred_scores, score_thresh, topk)
    anchor_boxes = anchors.tensor[anchor_idxs].float()
    centers = (anchor_boxes[:, :2] + anchor_boxes[:, 2:]) * 0.5
    decoded = box2box_transform.decode(pred_box_regs[anchor_idxs])
    result = Instances(
        image_size,
        pred_boxes=Boxes(distance2box(centers, decoded.distances * float(stride))),
        scores=pred_scores,
        pred_classes=classes_idxs,
    )
    if with_distributions:
        result.pred_box_dists = decoded.probs  # (K, 4, n+1)
        result.pred_box_std = decoded.std * float(stride)  # (K, 4) in input pixels
    if pred_quality is not None:
        result.pred_quality = pred_quality[anchor_idxs, 0]  # (K,)
    return result


def valid_clipped(pred: Instances, image_size: Tuple[int, int]) -> Instances:
    """
    Detections with their boxes clipped to the image, without empty boxes.
    A diverged model or a corrupt input gives Inf/NaN boxes: they count as
    empty (and are logged), so that evaluation and serving go on.
    """
    boxes = pred.pred_boxes.tensor
    if torch.jit.is_tracing():  # no reduction over a possibly empty tensor (see class_aware_nms)
        finite = torch.isfinite(boxes[:, 0] + boxes[:, 1] + boxes[:, 2] + boxes[:, 3])
    else:
        finite = torch.isfinite(boxes).all(dim=1)
    if not (torch.jit.is_scripting() or torch.jit.is_tracing()) and not bool(finite.all()):
        log_every_n_seconds(
            logging.WARNING,
            f"GFL: dropped {int((~finite).sum())} detections with non-finite boxes "
            "(the head's outputs hold Inf/NaN)",
            n=30,
            name="gfl_d2.modeling.meta_arch",
        )
    pred.pred_boxes = Boxes(torch.where(finite[:, None], boxes, torch.zeros_like(boxes)))
    pred.pred_boxes.clip(image_size)
    return pred[pred.pred_boxes.nonempty(threshold=0.0)]


def class_aware_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float,
    image_size: Tuple[int, int],
) -> Tensor:
    """
    NMS within each class; indices of the kept boxes, by decreasing score.

    One NMS over all boxes, each class shifted by a multiple of the image's
    longer side (the boxes are clipped to the image, so no two classes
    overlap), as MMDetection's ``batched_nms`` does. torchvision's
    ``batched_nms`` (detectron2's) loops over the classes instead once a CPU
    image has more than 1000 boxes, which costs a host sync per class. The
    image side, rather than the largest coordinate, also keeps an exported
    model free of a ReduceMax that onnxruntime up to 1.31 gets wrong on an
    empty input (an image without detections). The shifted boxes are float64
    (exact for any number of classes) except in a trace, since ONNX's
    NonMaxSuppression takes float32.

    Args:
        boxes: (K, 4) boxes inside the image; scores: (K,); classes: (K,) long.
        image_size: (H, W), ints or (traced) 0-dim tensors.
    """
    dtype = boxes.dtype if torch.jit.is_tracing() else torch.float64
    side = torch.stack([torch.as_tensor(s) for s in image_size]).max().to(boxes.device, dtype)
    offsets = classes.to(dtype) * (side + 1)
    return torchvision.ops.nms(boxes.to(dtype) + offsets[:, None], scores.to(dtype), iou_threshold)


def rescale_box_std(outputs: List[Dict], batched_inputs: List[Dict]) -> List[Dict]:
    """
    detectron2's ``detector_postprocess`` rescales the boxes from the input
    size to the requested output size; the edge standard deviations
    (``pred_box_std``, (K, 4)) must follow.
    """
    for out, inp in zip(outputs, batched_inputs):
        inst = out["instances"]
        in_h, in_w = inp["image"].shape[-2:]
        out_h, out_w = inst.image_size
        sx, sy = out_w / in_w, out_h / in_h
        inst.pred_box_std = inst.pred_box_std * inst.pred_box_std.new_tensor([sx, sy, sx, sy])
    return outputs
