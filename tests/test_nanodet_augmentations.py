"""
NanoDet's augmentations (gfl_d2.data.nanodet_augmentations): the warp's
matrix, boxes that follow the image through detectron2's mapper, parameters
in range, determinism under a seed, the colour jitter's formulas; with
NANODET_SRC, NanoDet's own warp.py and color.py on the same drawn values give
the same matrix, image (within OpenCV's interpolation) and boxes.
"""

import colorsys
import importlib.util
import os

import numpy as np
import pytest
from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode
from PIL import Image

from gfl_d2.data.nanodet_augmentations import (
    ColorJitterTransform,
    NanoDetColorJitter,
    NanoDetWarp,
    WarpTransform,
    nanodet_warp_matrix,
)
from gfl_studies.nanodet_runtime import nanodet_available, nanodet_source

PLUS = dict(scale=(0.6, 1.4), stretch=((0.8, 1.2), (0.8, 1.2)), translate=0.2, flip=0.5)
PLUS_COLOUR = dict(brightness=0.2, contrast=(0.6, 1.4), saturation=(0.5, 1.2))
MEAN, STD = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]  # NanoDet-Plus's normalisation


def test_the_matrix_centres_scales_stretches_flips_moves_and_resizes():
    h, w, out = 100, 200, (50, 80)
    m = nanodet_warp_matrix((h, w), out, 1.25, (0.8, 1.1), True, (0.4, 0.6))
    # the image's centre goes to the drawn point, resized: (0.4 w, 0.6 h) · (80 / w, 50 / h)
    np.testing.assert_allclose(m @ [w / 2, h / 2, 1], [0.4 * 80, 0.6 * 50, 1], atol=1e-12)
    # a step of one input pixel: x flipped and scaled 1.25 · 0.8, y scaled 1.25 · 1.1, resized
    np.testing.assert_allclose(m[:2, :2], np.diag([-1.25 * 0.8 * 80 / w, 1.25 * 1.1 * 50 / h]))
    np.testing.assert_array_equal(m[2], [0, 0, 1])
    # the defaults: NanoDet's plain resize (its evaluation)
    np.testing.assert_allclose(nanodet_warp_matrix((h, w), out), np.diag([80 / w, 50 / h, 1]))


def _rectangles_image(h, w, boxes):
    """Black, with each box a white rectangle (whole pixels: boxes on integer coordinates)."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = 255
    return img


def test_boxes_follow_the_image_through_detectrons_mapper(tmp_path):
    boxes = [(20, 30, 70, 90), (110, 10, 150, 40), (5, 100, 60, 118)]
    Image.fromarray(_rectangles_image(120, 160, boxes)).save(tmp_path / "a.png")
    record = {
        "file_name": str(tmp_path / "a.png"),
        "height": 120,
        "width": 160,
        "annotations": [
            {"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": i}
            for i, b in enumerate(boxes)
        ],
    }
    mapper = DatasetMapper(
        is_train=True, augmentations=[NanoDetWarp((96, 128), **PLUS)], image_format="RGB"
    )
    checked = 0
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(dict(record))
        image = out["image"].numpy()[0]  # (96, 128): white where a rectangle landed
        assert image.shape == (96, 128)
        inst = out["instances"]
        for box, cls in zip(inst.gt_boxes.tensor.numpy(), inst.gt_classes.tolist()):
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96
            # the rectangle's pixels (centres at integer coordinates) inside its box, and
            # its box tight around them: within the one pixel bilinear sampling blurs
            ys, xs = np.nonzero(image > 127)
            own = (xs >= x0 - 1) & (xs <= x1 + 1) & (ys >= y0 - 1) & (ys <= y1 + 1)
            assert own.any(), (seed, cls)
            assert xs[own].min() <= x0 + 1.5 and xs[own].max() >= x1 - 2.5, (seed, cls, box)
            assert ys[own].min() <= y0 + 1.5 and ys[own].max() >= y1 - 2.5, (seed, cls, box)
            checked += 1
        # every bright pixel belongs to a kept box
        ys, xs = np.nonzero(image > 127)
        b = inst.gt_boxes.tensor.numpy()
        inside = (
            (xs[:, None] >= b[:, 0] - 1)
            & (xs[:, None] <= b[:, 2] + 1)
            & (ys[:, None] >= b[:, 1] - 1)
            & (ys[:, None] <= b[:, 3] + 1)
        )
        assert inside.any(axis=1).all(), seed
    assert checked >= 24


def test_drawn_parameters_stay_in_their_ranges():
    np.random.seed(0)
    warp = NanoDetWarp((320, 320), **PLUS)
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    flips = 0
    for _ in range(400):
        m = warp.get_transform(image).matrix
        sx, sy = m[0, 0] * 300 / 320, m[1, 1] * 200 / 320  # undo the resize
        assert 0.6 * 0.8 - 1e-12 <= abs(sx) <= 1.4 * 1.2 + 1e-12
        assert 0.6 * 0.8 - 1e-12 <= sy <= 1.4 * 1.2 + 1e-12
        flips += sx < 0
        cx, cy, _ = m @ [150, 100, 1] / 320  # where the centre went, as a fraction
        assert 0.3 - 1e-12 <= cx <= 0.7 + 1e-12 and 0.3 - 1e-12 <= cy <= 0.7 + 1e-12
        assert m[0, 1] == m[1, 0] == 0 and list(m[2]) == [0, 0, 1]
    assert 160 <= flips <= 240  # 1/2 of 400, within 4 standard deviations (10)
    jitter = NanoDetColorJitter(**PLUS_COLOUR)
    drawn = [jitter.get_transform(image) for _ in range(400)]
    for name, neutral, (low, high) in (
        ("brightness", 0.0, (-0.2, 0.2)),
        ("contrast", 1.0, (0.6, 1.4)),
        ("saturation", 1.0, (0.5, 1.2)),
    ):
        values = np.array([getattr(t, name) for t in drawn])
        assert 160 <= (values != neutral).sum() <= 240, name
        assert values.min() >= low and values.max() <= high, name


def test_the_same_seed_gives_the_same_image_and_boxes():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(90, 140, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 12.0, 50.0, 60.0], [70.0, 5.0, 130.0, 80.0]])
    augs = [NanoDetWarp((64, 64), **PLUS), NanoDetColorJitter(**PLUS_COLOUR)]

    def run(seed):
        np.random.seed(seed)
        transforms = [a.get_transform(image) for a in augs]
        img = image
        for t in transforms:
            img = t.apply_image(img)
        return img, transforms[0].apply_box(boxes)

    (a, ba), (b, bb), (c, bc) = run(5), run(5), run(6)
    assert a.dtype == np.float32 and a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ba, bb)
    assert not np.array_equal(a, c) and not np.array_equal(ba, bc)


def test_what_nanodet_plus_does_not_use_is_refused():
    for kwargs in (dict(rotation=10), dict(shear=2), dict(perspective=1e-3), dict(keep_ratio=True)):
        with pytest.raises(ValueError, match="not supported: {'" + next(iter(kwargs))):
            NanoDetWarp((320, 320), **kwargs)
    with pytest.raises(ValueError, match="contrast"):
        NanoDetColorJitter(contrast=(1.4, 0.6))
    with pytest.raises(ValueError, match="affine"):  # a perspective matrix
        WarpTransform(np.array([[1.0, 0, 0], [0, 1, 0], [1e-3, 0, 1]]), 8, 8)


def test_the_colour_jitter_adds_multiplies_and_scales_the_hsv_saturation():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, size=(6, 7, 3), dtype=np.uint8)
    out = ColorJitterTransform(brightness=0.1, contrast=0.8).apply_image(image)
    np.testing.assert_allclose(out, (image + 25.5) * 0.8, rtol=1e-6)
    assert out.dtype == np.float32
    # saturation: HSV (Python's colorsys, the formulas OpenCV's float conversion uses) with S
    # scaled, without clipping (S may pass 1)
    factor = 1.15
    got = ColorJitterTransform(saturation=factor).apply_image(image) / 255.0
    for pixel, result in zip(image.reshape(-1, 3) / 255.0, got.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(*pixel)
        np.testing.assert_allclose(result, colorsys.hsv_to_rgb(h, s * factor, v), atol=1e-6)


def test_a_warped_uint8_image_stays_uint8_and_a_mask_takes_the_nearest_pixel():
    m = nanodet_warp_matrix((4, 4), (8, 8))
    t = WarpTransform(m, 8, 8)
    mask = np.arange(16, dtype=np.uint8).reshape(4, 4)
    warped = t.apply_segmentation(mask)
    assert warped.dtype == np.uint8 and set(np.unique(warped)) <= set(range(16))
    assert t.apply_image(np.full((4, 4, 3), 200, np.uint8)).dtype == np.uint8


# --- against NanoDet's own functions (NANODET_SRC) ---

nanodet = pytest.mark.skipif(
    not nanodet_available(), reason="NANODET_SRC (NanoDet's source) is not set"
)


def _nanodet_transform(name):
    """NanoDet's data/transform/<name>.py alone (OpenCV and NumPy; no NanoDet package import)."""
    pytest.importorskip("cv2")
    path = os.path.join(nanodet_source(), "nanodet", "data", "transform", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"nanodet_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Drawn:
    """Stands in for ``random`` in a NanoDet module: the given fractions, coins and flip draw."""

    def __init__(self, fractions=(), coins=(), flip=0.0):
        self.fractions, self.coins, self.flip = list(fractions), list(coins), flip

    def uniform(self, low, high):
        return low + self.fractions.pop(0) * (high - low)

    def randint(self, low, high):
        return self.coins.pop(0)

    def random(self):
        return self.flip


@nanodet
@pytest.mark.parametrize("trial", range(4))
def test_nanodets_warp_gives_the_same_matrix_image_and_boxes(trial):
    warp = _nanodet_transform("warp")
    rng = np.random.default_rng(trial)
    h, w = (int(v) for v in rng.integers(60, 220, size=2))
    out_h, out_w = (96, 80) if trial % 2 else (80, 80)
    noise = rng.integers(0, 256, size=(h, w, 3)).astype(np.float64)
    # a smooth image (neighbours differ by a few levels) and a noisy one (by up to 255)
    smooth = np.cumsum(np.cumsum(rng.integers(-1, 2, size=(h, w, 3)), 0), 1)
    smooth = (smooth - smooth.min()) * 255.0 / max(1, np.ptp(smooth))
    corners = np.sort(rng.uniform(0, 1, size=(8, 2, 2)), axis=1) * [w, h]
    boxes = corners.reshape(8, 4).astype(np.float32)  # (x0, y0, x1, y1)
    # NanoDet draws: perspective x2, scale, stretch x2, rotation, shear x2, translate x2
    fractions, flip = rng.uniform(size=10), float(rng.uniform())
    for image in (smooth.round().astype(np.uint8), noise.astype(np.uint8)):
        warp.random = Drawn(fractions, flip=flip)
        shape = warp.ShapeTransform(False, **PLUS, perspective=0.0, rotation=0, shear=0)
        theirs = shape(dict(img=image.copy(), gt_bboxes=boxes.copy()), (out_w, out_h))
        scale = 0.6 + 0.8 * fractions[2]
        stretch = 0.8 + 0.4 * fractions[3], 0.8 + 0.4 * fractions[4]
        centre = 0.3 + 0.4 * fractions[8], 0.3 + 0.4 * fractions[9]
        m = nanodet_warp_matrix((h, w), (out_h, out_w), scale, stretch, flip < 0.5, centre)
        np.testing.assert_allclose(m, theirs["warp_matrix"], rtol=1e-12, atol=1e-12)
        t = WarpTransform(m, out_h, out_w)
        ours = t.apply_image(image)
        # OpenCV may place a sample on a 1/32-pixel grid: off by at most 1/64 pixel in x
        # and y, times the largest step between neighbours, plus 1 for rounding
        step = max(np.abs(np.diff(image.astype(int), axis=a)).max() for a in (0, 1))
        step = max(step, int(image.max()))  # the step to the black outside
        diff = np.abs(ours.astype(int) - theirs["img"].astype(int))
        assert diff.max() <= 1 + np.ceil(step / 32), (diff.max(), step)
        # boxes: detectron2's apply_box, then its clip to the image (transform_instance_annotations)
        ours_boxes = np.minimum(t.apply_box(boxes).clip(min=0), [out_w, out_h] * 2)
        np.testing.assert_allclose(ours_boxes, theirs["gt_bboxes"], rtol=0, atol=1e-4)


@nanodet
@pytest.mark.parametrize(
    "coins, fractions",
    [
        ((1, 1, 1), (0.1, 0.2, 0.9)),  # brightness −0.16: dark pixels below 0 (V < 0)
        ((1, 1, 1), (0.9, 0.7, 0.1)),
        ((0, 0, 1), (0.95,)),
        ((1, 0, 0), (0.0,)),
        ((0, 0, 0), ()),
    ],
)
def test_nanodets_colour_jitter_gives_the_same_image(coins, fractions):
    color = _nanodet_transform("color")
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    image[:6] = 0  # the black a warp leaves outside the image
    color.random = Drawn(fractions, coins)
    settings = dict(PLUS_COLOUR, normalize=[MEAN, STD])
    theirs = color.color_aug_and_norm(dict(img=image.copy()), settings)["img"]
    drawn, left = {}, list(fractions)
    for coin, (name, low, high, neutral) in zip(
        coins,
        [
            ("brightness", -0.2, 0.2, 0.0),
            ("contrast", 0.6, 1.4, 1.0),
            ("saturation", 0.5, 1.2, 1.0),
        ],
    ):
        drawn[name] = low + left.pop(0) * (high - low) if coin else neutral
    out = ColorJitterTransform(**drawn).apply_image(image)
    ours = (out.astype(np.float64) - MEAN) / STD  # the model's normalisation
    # float32 on both sides (NanoDet in 0-1 units, here 0-255): a few ε of each value; and
    # OpenCV's HSV divides by |V| + FLT_EPSILON, V (the largest channel before the
    # saturation, 0-1 units) itself rounded: a few ε / |V| of each channel's distance from V
    eps = float(np.finfo(np.float32).eps)
    before = ColorJitterTransform(drawn["brightness"], drawn["contrast"]).apply_image(image)
    top = before.max(axis=2, keepdims=True)
    reach = np.abs(out - top) * 255.0 / np.maximum(np.abs(top), 1e-9)
    bound = 8 * eps * (np.abs(top) + np.abs(out) + 255.0 + reach) / STD
    assert (np.abs(ours - theirs) <= bound).all(), np.abs(ours - theirs).max()
    if coins == (1, 1, 1) and fractions[0] < 0.5:
        assert (top < 0).mean() > 0.05  # the case OpenCV's |V| reverses is tested
