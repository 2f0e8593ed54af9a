"""
NanoDet-Plus's training augmentations (``nanodet/data/transform/warp.py`` and
``color.py``) as detectron2 augmentations.

:class:`NanoDetWarp`: one 3x3 matrix per image (NanoDet's ``ShapeTransform``)
that centres the image, scales it, stretches each axis, flips it, moves its
centre to a random point of the middle of the image and resizes it to the
output size without keeping the aspect ratio; the image is warped by it as
OpenCV's ``warpPerspective`` does (bilinear, pixel centres at integer
coordinates, black outside the image), here with torch's ``grid_sample``. A
box becomes the box around its four warped corners, clipped to the output by
detectron2's annotation transform; a box clipped to nothing is dropped by
detectron2's mapper (NanoDet keeps it, with zero width or height).

:class:`NanoDetColorJitter`: NanoDet's colour jitter on the warped BGR image
in 0-255 units, before the model's normalisation: each of brightness (an
offset, in units of the full range 255), contrast (a factor) and saturation
(OpenCV's HSV saturation times a factor) applied with probability 1/2, in that
order, without clipping; the image becomes float32.
"""

from typing import Sequence, Tuple

import detectron2.data.transforms as T
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "NanoDetWarp",
    "NanoDetColorJitter",
    "WarpTransform",
    "ColorJitterTransform",
    "nanodet_warp_matrix",
]


def nanodet_warp_matrix(
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    scale: float = 1.0,
    stretch: Tuple[float, float] = (1.0, 1.0),
    flip: bool = False,
    centre: Tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """
    NanoDet's warp matrix (3, 3), float64, from input pixels to output pixels,
    for an image of ``image_size`` (height, width) and an output of
    ``output_size`` (height, width): centre, ``scale`` both axes, ``stretch``
    (x, y) them, flip horizontally, put the centre at ``centre`` (x, y, as
    fractions of the input's width and height), resize to the output; composed
    in NanoDet's order (``ShapeTransform.__call__``).
    """
    h, w = image_size
    out_h, out_w = output_size
    matrix = np.eye(3)
    matrix[:2, 2] = -w / 2, -h / 2
    for diagonal in ((scale, scale), stretch, (-1.0 if flip else 1.0, 1.0)):
        matrix = np.diag([diagonal[0], diagonal[1], 1.0]) @ matrix
    move = np.eye(3)
    move[:2, 2] = centre[0] * w, centre[1] * h
    resize = np.diag([out_w / w, out_h / h, 1.0])
    return resize @ move @ matrix


def _normalising(height: int, width: int) -> np.ndarray:
    """Pixel coordinates to grid_sample's (align_corners=False: pixel i at (2i + 1) / size − 1)."""
    return np.array([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])


def _warp_array(array: np.ndarray, matrix: np.ndarray, size: Tuple[int, int], mode: str):
    """``array`` (H, W, C) float warped by the affine ``matrix`` to ``size`` (h, w): (h, w, C)."""
    out_h, out_w = size
    # where each output pixel samples, in grid_sample's coordinates of the input
    theta = (
        _normalising(*array.shape[:2])
        @ np.linalg.inv(matrix)
        @ np.linalg.inv(_normalising(out_h, out_w))
    )
    image = torch.from_numpy(array).permute(2, 0, 1)[None]  # a view: no copy
    theta = torch.from_numpy(theta[:2]).to(image.dtype)
    x = (2 * torch.arange(out_w, dtype=image.dtype) + 1) / out_w - 1  # (w,)
    y = ((2 * torch.arange(out_h, dtype=image.dtype) + 1) / out_h - 1)[:, None]  # (h, 1)
    # affine_grid's grid, by broadcasting (several times faster on the CPU): (1, h, w, 2)
    grid = torch.stack([t[0] * x + t[1] * y + t[2] for t in theta], dim=-1)[None]
    out = F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


class WarpTransform(T.Transform):
    """
    The image (H, W, C) warped by ``matrix`` (3, 3, affine; output pixel =
    matrix · input pixel) to (height, width), bilinear, black outside the image,
    as OpenCV's ``warpPerspective`` does; uint8 images stay uint8 (rounded).
    Coordinates (N, 2) go through the matrix; a box is the box around its four
    warped corners (detectron2's ``Transform.apply_box``).
    """

    def __init__(self, matrix: np.ndarray, height: int, width: int):
        super().__init__()
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (3, 3) or not np.array_equal(matrix[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"WarpTransform needs an affine 3x3 matrix, got {matrix.tolist()}")
        self._set_attributes(locals())

    def _apply(self, img: np.ndarray, mode: str) -> np.ndarray:
        squeeze = img.ndim == 2
        array = img[..., None] if squeeze else img
        dtype = np.float64 if array.dtype == np.float64 else np.float32
        out = _warp_array(array.astype(dtype), self.matrix, (self.height, self.width), mode)
        if img.dtype == np.uint8:
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        elif out.dtype != img.dtype:
            out = out.astype(img.dtype)
        return out[..., 0] if squeeze else out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._apply(img, "bilinear")

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._apply(segmentation, "nearest")

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords @ self.matrix[:2, :2].T + self.matrix[:2, 2]


def _range(value, name: str) -> Tuple[float, float]:
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {tuple(value)}")
    return low, high


class NanoDetWarp(T.Augmentation):
    """
    NanoDet's random warp (``ShapeTransform``) to ``output_size`` (height,
    width): a scale drawn from ``scale``, a stretch of x and of y from
    ``stretch`` ((x low, x high), (y low, y high)), a horizontal flip with
    probability ``flip``, the image's centre moved to a point drawn from
    [0.5 − translate, 0.5 + translate] of its width and of its height. The
    defaults change nothing but the size: NanoDet's resize for evaluation.
    NanoDet-Plus's configs set perspective, rotation and shear to 0 and
    keep_ratio to False; other values are refused.
    """

    def __init__(
        self,
        output_size: Tuple[int, int],
        scale: Sequence[float] = (1.0, 1.0),
        stretch: Sequence[Sequence[float]] = ((1.0, 1.0), (1.0, 1.0)),
        translate: float = 0.0,
        flip: float = 0.0,
        perspective: float = 0.0,
        rotation: float = 0.0,
        shear: float = 0.0,
        keep_ratio: bool = False,
    ):
        super().__init__()
        unsupported = {"perspective": perspective, "rotation": rotation, "shear": shear}
        unsupported = {k: v for k, v in unsupported.items() if v}
        if keep_ratio:
            unsupported["keep_ratio"] = keep_ratio
        if unsupported:
            raise ValueError(
                f"NanoDetWarp does what NanoDet-Plus's configs use (perspective, rotation and "
                f"shear 0, keep_ratio False); not supported: {unsupported}"
            )
        if not 0.0 <= flip <= 1.0 or translate < 0.0:
            raise ValueError(f"need 0 <= flip <= 1 and translate >= 0, got {flip}, {translate}")
        self.output_size = tuple(int(v) for v in output_size)
        self.scale = _range(scale, "scale")
        self.stretch = (_range(stretch[0], "stretch x"), _range(stretch[1], "stretch y"))
        self.translate, self.flip = float(translate), float(flip)
        # refused unless 0 / False: kept for detectron2's repr
        self.perspective, self.rotation, self.shear, self.keep_ratio = 0.0, 0.0, 0.0, False

    def get_transform(self, image):
        rng = np.random
        scale = rng.uniform(*self.scale)
        stretch = (rng.uniform(*self.stretch[0]), rng.uniform(*self.stretch[1]))
        flip = rng.uniform() < self.flip
        centre = tuple(rng.uniform(0.5 - self.translate, 0.5 + self.translate, size=2))
        matrix = nanodet_warp_matrix(
            image.shape[:2], self.output_size, scale, stretch, flip, centre
        )
        return WarpTransform(matrix, *self.output_size)


class ColorJitterTransform(T.Transform):
    """
    NanoDet's colour jitter with drawn values (``color_aug_and_norm`` without
    its normalisation): add ``brightness · 255``, multiply by ``contrast``,
    scale the saturation by ``saturation``; on an (H, W, 3) image in 0-255 units,
    which becomes float32. Coordinates do not change.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 1.0, saturation: float = 1.0):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        out = img.astype(np.float32)
        if self.brightness:
            out += np.float32(self.brightness * 255.0)
        if self.contrast != 1.0:
            out *= np.float32(self.contrast)
        if self.saturation != 1.0:
            # OpenCV's float HSV round trip with S scaled, in closed form: the largest
            # channel V stays, each other moves away from V by the factor. OpenCV divides
            # by |V|, so where V < 0 (after a negative brightness) the move is reversed.
            # (numpy's max over an axis of 3 is many times slower than two maximums)
            top = np.maximum(np.maximum(out[..., 0], out[..., 1]), out[..., 2])[..., None]
            out = top - np.float32(self.saturation) * np.sign(top) * (top - out)
        return out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


class NanoDetColorJitter(T.Augmentation):
    """
    NanoDet's random colour jitter: each of a brightness offset from
    [−brightness, brightness] (of the full range), a contrast factor from
    ``contrast`` and a saturation factor from ``saturation`` is applied with
    probability 1/2 (NanoDet-Plus: 0.2, (0.6, 1.4), (0.5, 1.2)). Put it after
    :class:`NanoDetWarp`, as NanoDet does.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: Sequence[float] = (1.0, 1.0),
        saturation: Sequence[float] = (1.0, 1.0),
    ):
        super().__init__()
        if brightness < 0:
            raise ValueError(f"brightness must be >= 0, got {brightness}")
        self.brightness = float(brightness)
        self.contrast = _range(contrast, "contrast")
        self.saturation = _range(saturation, "saturation")

    def get_transform(self, image):
        rng = np.random
        drawn = {}
        for name, (low, high), neutral in (
            ("brightness", (-self.brightness, self.brightness), 0.0),
            ("contrast", self.contrast, 1.0),
            ("saturation", self.saturation, 1.0),
        ):
            # a coin, then the value, for each in NanoDet's order
            drawn[name] = rng.uniform(low, high) if rng.randint(2) else neutral
        return ColorJitterTransform(**drawn)
