"""Augmentation lists for configs whose image size is a setting (``configs/OwnData``)."""
from typing import List

import detectron2.data.transforms as T

__all__ = ["resize_and_flip"]


def resize_and_flip(min_size: int, max_size: int, flip: bool = True) -> List[T.Augmentation]:
    """
    Shorter side to ``min_size`` (longer side at most ``max_size``), then a
    horizontal flip at random (``flip``). ``min_size=0`` keeps the images' own size.
    """
    if min_size < 0 or (min_size and max_size < min_size):
        raise ValueError(f"need min_size >= 0 and max_size >= min_size, got {min_size}, {max_size}")
    augs: List[T.Augmentation] = [T.ResizeShortestEdge(min_size, max_size)] if min_size else []
    if flip:
        augs.append(T.RandomFlip(horizontal=True))
    return augs
