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
without copying annotations it does not change. It uses detectron2's public
steps only (``read_image``, ``check_image_size``, the mapper's
``augmentations``, ``filter_empty_instances``). Whatever it does not handle
(masks, keypoints, recomputed boxes, semantic segmentation, proposals, boxes
that are not lists of Python numbers, other box modes) goes through
``DatasetMapper.__call__`` unchanged.
"""

import copy
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

__all__ = ["BoxDatasetMapper"]

_FAST_MODES = (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


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
        if annos is None:
            return super().__call__(dataset_dict)
        rest = {k: v for k, v in dataset_dict.items() if k != "annotations"}
        if not self.is_train:
            # detectron2 drops the annotations at inference: no need to copy them
            return super().__call__(rest)
        kept = [obj for obj in annos if obj.get("iscrowd", 0) == 0]
        groups = self._box_groups(kept)
        if groups is None or "sem_seg_file_name" in rest or self.proposal_topk is not None:
            return super().__call__(dataset_dict)
        mapped, transforms = self._map_image(rest)
        mapped["instances"] = _box_instances(kept, groups, transforms, mapped["image"].shape[1:])
        return mapped

    def _box_groups(self, kept: List[Dict]) -> Optional[Dict[tuple, List[int]]]:
        """The indices of ``kept`` by (box mode, dtype); None if a box needs detectron2's path."""
        if not self._boxes_only():
            return None
        groups: Dict[tuple, List[int]] = {}
        for i, obj in enumerate(kept):
            kind = _box_kind(obj["bbox"])
            mode = obj["bbox_mode"]
            if kind is None or mode not in _FAST_MODES:
                return None
            groups.setdefault((mode, kind), []).append(i)
        return groups

    def _map_image(self, record: Dict):
        """``DatasetMapper``'s image steps on ``record`` (a copy): the dict with its image, and the
        transforms applied (the same reads and RNG use)."""
        mapped = copy.deepcopy(record)
        image = utils.read_image(mapped["file_name"], format=self.image_format)
        utils.check_image_size(mapped, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        mapped["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return mapped, transforms


def _box_instances(kept: List[Dict], groups, transforms, image_shape) -> Instances:
    """The ``Instances`` of the boxes of ``kept``, as ``transform_instance_annotations`` and
    ``annotations_to_instances`` make them, empty ones filtered."""
    h, w = image_shape
    boxes = np.zeros((len(kept), 4), dtype=np.float64)
    for (mode, kind), index in groups.items():
        xyxy = _to_xyxy([kept[i]["bbox"] for i in index], mode, kind)
        # elementwise per box, as transform_instance_annotations does one box at a time
        xyxy = transforms.apply_box(xyxy).clip(min=0)
        boxes[index] = np.minimum(xyxy, [w, h, w, h])
    instances = Instances((h, w))
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.tensor(
        [int(obj["category_id"]) for obj in kept], dtype=torch.int64
    )
    return utils.filter_empty_instances(instances)
