"""Augmentation lists for configs whose image size is a setting (``configs/OwnData``)."""

from typing import List

import detectron2.data.transforms as T
from PIL import Image

__all__ = ["ShrinkToSize", "resize_and_flip"]


class ShrinkToSize(T.Augmentation):
    """
    Scale an image down so that its shorter side is at most ``short`` and its
    longer side at most ``long`` (detectron2's ``ResizeShortestEdge`` with no
    enlarging): smaller images keep their size.
    """

    def __init__(self, short: int, long: int):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        scale = min(1.0, self.short / min(h, w), self.long / max(h, w))
        if scale >= 1.0:
            return T.NoOpTransform()
        new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
        return T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR)


def resize_and_flip(
    min_size: int, max_size: int, flip: bool = True, enlarge: bool = False
) -> List[T.Augmentation]:
    """
    Shorter side to ``min_size`` and longer side at most ``max_size``; with
    ``enlarge=False`` only images larger than that are scaled (down); then a
    horizontal flip at random (``flip``). ``min_size=0`` keeps every image's size.
    """
    if min_size < 0 or (min_size and max_size < min_size):
        raise ValueError(f"need min_size >= 0 and max_size >= min_size, got {min_size}, {max_size}")
    augs: List[T.Augmentation] = []
    if min_size:
        augs.append(
            T.ResizeShortestEdge(min_size, max_size)
            if enlarge
            else ShrinkToSize(min_size, max_size)
        )
    if flip:
        augs.append(T.RandomFlip(horizontal=True))
    return augs
