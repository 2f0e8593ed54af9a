"""
detectron2's ``DatasetMapper`` for box detection, with the boxes of an image
transformed at once.

detectron2's mapper deep-copies every dataset dict and transforms its
annotations one at a time (``transform_instance_annotations``: a tensor per
``BoxMode.convert``, a transform call per box). With ~14 objects an image and
the loader in the training process, that is most of the mapper's time on a
small CPU. :class:`BoxDatasetMapper` returns the same dict (the same image
tensor, ``gt_boxes`` and ``gt_classes`` bit for bit, the same RNG use) while
converting and transforming all boxes of a dtype and mode in one call, and
without copying annotations it does not change. Whatever it does not handle
(masks, keypoints, recomputed boxes, boxes that are not lists of Python
numbers, other box modes) goes through detectron2's own code unchanged.
"""

import copy
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode, Instances

__all__ = ["BoxDatasetMapper"]

_FAST_MODES = (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


class _SharedAnnotations(list):
    """The annotations of a dataset dict, handed through ``DatasetMapper.__call__``'s
    deep copy by reference: :meth:`BoxDatasetMapper._transform_annotations` reads
    them without changing them (and copies them before any fallback that would)."""

    def __deepcopy__(self, memo):
        return self


def _box_kind(box) -> Optional[str]:
    """ "int" or "float" for a 4-list/tuple of Python numbers (the dtype detectron2's
    per-box code would give it), None for anything it treats otherwise."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return None
    types = {type(v) for v in box}
    if types == {int}:
        return "int"
    if types <= {int, float}:
        return "float"
    return None


def _to_xyxy(boxes: List, mode: BoxMode, kind: str) -> np.ndarray:
    """(R, 4) boxes as XYXY_ABS, in the dtype detectron2's ``BoxMode.convert`` on one
    list would use: XYWH lists are added up as a torch tensor (int64, or float32 if
    any value is a float), XYXY lists are left as given (then int64 or float64)."""
    if mode == BoxMode.XYWH_ABS:
        arr = torch.tensor(boxes, dtype=torch.int64 if kind == "int" else torch.float32)
        arr[:, 2:] += arr[:, :2]
        # detectron2 goes back through Python numbers, which numpy reads as int64 / float64
        return arr.numpy().astype(np.int64 if kind == "int" else np.float64)
    return np.array(boxes, dtype=np.int64 if kind == "int" else np.float64)


class BoxDatasetMapper(DatasetMapper):
    """``DatasetMapper`` with the same arguments and output; faster when training
    on boxes only (no masks, keypoints or box recomputation)."""

    def _boxes_only(self) -> bool:
        return self.is_train and not (
            self.use_instance_mask or self.use_keypoint or self.recompute_boxes
        )

    def __call__(self, dataset_dict: Dict) -> Dict:
        annos = dataset_dict.get("annotations")
        if annos is not None and (self._boxes_only() or not self.is_train):
            # the parent deep-copies the dict; nothing below changes the annotations
            dataset_dict = dict(dataset_dict)
            dataset_dict["annotations"] = _SharedAnnotations(annos)
        return super().__call__(dataset_dict)

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        annos = dataset_dict["annotations"]
        kept = [obj for obj in annos if obj.get("iscrowd", 0) == 0]
        groups: Dict[tuple, List[int]] = {}
        fast = self._boxes_only()
        for i, obj in enumerate(kept):
            kind = _box_kind(obj["bbox"]) if fast else None
            mode = obj["bbox_mode"]
            if kind is None or mode not in _FAST_MODES:
                fast = False
                break
            groups.setdefault((mode, kind), []).append(i)
        if not fast:
            if isinstance(annos, _SharedAnnotations):
                # detectron2's own path edits the annotations in place: give it copies
                dataset_dict["annotations"] = copy.deepcopy(list(annos))
            return super()._transform_annotations(dataset_dict, transforms, image_shape)
        dataset_dict.pop("annotations")

        h, w = image_shape
        boxes = np.zeros((len(kept), 4), dtype=np.float64)
        for (mode, kind), index in groups.items():
            xyxy = _to_xyxy([kept[i]["bbox"] for i in index], mode, kind)
            # elementwise per box, as transform_instance_annotations does one box at a time
            xyxy = transforms.apply_box(xyxy).clip(min=0)
            boxes[index] = np.minimum(xyxy, [w, h, w, h])

        instances = Instances(image_shape)
        instances.gt_boxes = Boxes(boxes)
        instances.gt_classes = torch.tensor(
            [int(obj["category_id"]) for obj in kept], dtype=torch.int64
        )
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
