"""
A second generated dataset ("bars"), with statistics unlike those of
:mod:`gfl_d2.data.shapes`: non-square images of varying size, four classes with non-contiguous
ids (3, 7, 11, 20), objects from long thin bars (aspect up to 1:12, up to 95%
of the image side) to a few pixels, a jittered colour per class on muted
backgrounds, and some images without objects. The own-data study
(:mod:`.own_data_study`) trains GFL and detectron2's FCOS on it, data the
project was not tuned on; it also exercises the three folder layouts of
:mod:`gfl_d2.data` (:func:`write_bars_dataset`).
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from detectron2.structures import BoxMode
from PIL import Image, ImageDraw

from gfl_d2.data import write_layout

__all__ = [
    "BarsConfig",
    "BARS_CLASSES",
    "BARS_IDS",
    "render_bars_image",
    "generate_bars_split",
    "write_bars_dataset",
]

BARS_CLASSES = ["bar", "ellipse", "cross", "frame"]
BARS_IDS = [3, 7, 11, 20]
_COLOURS = [(235, 150, 40), (70, 200, 220), (240, 240, 240), (200, 60, 160)]


@dataclass
class BarsConfig:
    min_width: int = 96
    max_width: int = 192
    min_height: int = 64
    max_height: int = 160
    empty_prob: float = 0.12
    max_objects: int = 10
    min_side: float = 6.0
    noise_std: float = 8.0


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    coarse = rng.uniform(20, 130, size=(3, 4, 3)).astype(np.float32)
    img = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32
    )
    return img


def _object(rng: np.random.Generator, w: int, h: int, cfg: BarsConfig) -> Tuple[int, List[float]]:
    """A class index and a float box (x0, y0, x1, y1) inside the image."""
    cls = int(rng.integers(len(BARS_CLASSES)))
    side = min(w, h)
    if cls == 0:  # bar: long and thin, horizontal or vertical
        length_limit = w if rng.random() < 0.5 else h
        horizontal = length_limit == w
        length = float(np.exp(rng.uniform(np.log(4 * cfg.min_side), np.log(0.95 * length_limit))))
        thick = max(cfg.min_side * 0.5, length / float(rng.uniform(3, 12)))
        bw, bh = (length, thick) if horizontal else (thick, length)
    else:
        size = float(np.exp(rng.uniform(np.log(cfg.min_side), np.log(0.8 * side))))
        aspect = (
            float(np.exp(rng.uniform(-1.0, 1.0)))
            if cls == 1
            else float(np.exp(rng.uniform(-0.35, 0.35)))
        )
        if cls == 3:
            aspect = float(np.exp(rng.uniform(-0.7, 0.7)))
        bw, bh = size * aspect, size / aspect
    bw, bh = min(max(bw, cfg.min_side * 0.5), w - 1.0), min(max(bh, cfg.min_side * 0.5), h - 1.0)
    x0, y0 = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
    return cls, [x0, y0, x0 + bw, y0 + bh]


def _draw(
    draw: ImageDraw.ImageDraw, cls: int, box: List[float], colour: Tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if cls == 0:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif cls == 1:
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif cls == 2:  # a plus sign whose arms span the box
        tx, ty = max((x1 - x0) / 4, 1.0), max((y1 - y0) / 4, 1.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle([x0, cy - ty / 2, x1 - 1, cy + ty / 2], fill=colour)
        draw.rectangle([cx - tx / 2, y0, cx + tx / 2, y1 - 1], fill=colour)
    else:  # a hollow frame
        t = max(min(x1 - x0, y1 - y0) / 6, 1.0)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=int(round(t)))


def render_bars_image(index: int, seed: int, cfg: BarsConfig) -> Tuple[np.ndarray, List[Dict]]:
    """
    (H, W, 3) uint8 image ``index`` of the split with ``seed``, and its annotations (XYXY_ABS,
    class index).
    """
    rng = np.random.default_rng([seed, index, 7])
    w = int(rng.integers(cfg.min_width, cfg.max_width + 1))
    h = int(rng.integers(cfg.min_height, cfg.max_height + 1))
    img = _background(rng, w, h)
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    anns = []
    count = 0 if rng.random() < cfg.empty_prob else int(rng.integers(1, cfg.max_objects + 1))
    for _ in range(count):
        cls, box = _object(rng, w, h, cfg)
        # each class has a hue, jittered; the background is muted, so objects stand out
        colour = np.array(_COLOURS[cls], dtype=np.float32) + rng.normal(0, 25, 3)
        _draw(draw, cls, box, tuple(int(c) for c in np.clip(colour, 0, 255)))
        anns.append({"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls, "iscrowd": 0})
    out = np.asarray(pil, dtype=np.float32) + rng.normal(0, cfg.noise_std, size=(h, w, 3))
    return np.clip(out, 0, 255).astype(np.uint8), anns


def generate_bars_split(
    image_dir: str, split: str, num_images: int, seed: int, cfg: BarsConfig = None
) -> List[Dict]:
    """Render ``num_images`` PNGs into ``image_dir``; return their detectron2 records."""
    cfg = cfg or BarsConfig()
    os.makedirs(image_dir, exist_ok=True)
    records = []
    for i in range(num_images):
        img, anns = render_bars_image(i, seed, cfg)
        path = os.path.join(image_dir, f"{split}_{i:06d}.png")
        Image.fromarray(img).save(path)
        records.append(
            {
                "file_name": path,
                "image_id": i,
                "height": img.shape[0],
                "width": img.shape[1],
                "annotations": anns,
            }
        )
    return records


def write_bars_dataset(
    root: str, layout: str, splits=(("train", 1500, 0), ("val", 300, 1)), cfg: BarsConfig = None
) -> Dict[str, List[Dict]]:
    """
    Generate the bars splits ``(name, num_images, seed)`` and write them under ``root`` in
    ``layout``.
    """
    out = {}
    for split, num_images, seed in splits:
        records = generate_bars_split(
            os.path.join(root, ".rendered", split), split, num_images, seed, cfg
        )
        write_layout(layout, root, split, records, BARS_CLASSES, BARS_IDS)
        out[split] = records
    return out
