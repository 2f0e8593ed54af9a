"""
A generated detection dataset ("shapes") in COCO format, so that GFL can be
trained and evaluated with no download.

Every image has a cluttered, noisy background and several to dozens of
objects of five classes (distinct shapes and colours), from about 8 px to half
the image, that overlap and partly occlude each other. Some objects have
blurred edges, some edges fade out, some objects have little contrast with the
background: the ambiguous boundaries GFL's edge distributions are meant for.
Boxes are the full (amodal) extent of each shape. Each annotation also carries
``edge_flags``: for the edges (left, top, right, bottom), whether the
generator blurred/faded them and whether later objects occlude them (COCO
tools ignore the extra field).

Generation is deterministic: image ``i`` of a split depends only on the seed
and ``i``.
"""

import json
import logging
import multiprocessing
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "ShapesConfig",
    "CATEGORIES",
    "render_image",
    "write_split",
    "build_shapes_dataset",
    "register_shapes",
    "prepare_shapes",
]

logger = logging.getLogger(__name__)

# id, name, base colour (RGB)
CATEGORIES: List[Tuple[int, str, Tuple[int, int, int]]] = [
    (1, "circle", (220, 60, 50)),
    (2, "square", (60, 170, 60)),
    (3, "triangle", (60, 90, 220)),
    (4, "diamond", (225, 200, 40)),
    (5, "ring", (190, 70, 200)),
]
EDGES = ("left", "top", "right", "bottom")

# Each object is drawn in a window around its box: its coverage is exactly 0
# beyond about 2 px outside the box, and a blur (sigma <= 2.5: three box passes,
# each at most 3 px) spreads it by at most 9 px more, so everything outside the
# window is left exactly as drawing on the whole image would leave it.
WINDOW_MARGIN = 16


def _window(box: np.ndarray, size: int) -> Tuple[slice, slice]:
    """The (rows, columns) of the image an object with ``box`` (x0, y0, x1, y1) can change."""
    x0, y0, x1, y1 = (float(v) for v in box)
    rows = slice(
        max(int(np.floor(y0)) - WINDOW_MARGIN, 0), min(int(np.ceil(y1)) + WINDOW_MARGIN, size)
    )
    cols = slice(
        max(int(np.floor(x0)) - WINDOW_MARGIN, 0), min(int(np.ceil(x1)) + WINDOW_MARGIN, size)
    )
    return rows, cols


@dataclass
class ShapesConfig:
    """The knobs of the generator (defaults: the embedded dataset)."""

    image_size: int = 128
    min_objects: int = 3
    max_objects: int = 24
    min_size: float = 8.0
    max_size_frac: float = 0.5  # largest side as a fraction of the image side
    max_occluded_frac: float = 0.6  # an object stays at least 40% visible
    blur_prob: float = 0.15  # whole object Gaussian-blurred
    fade_edge_prob: float = 0.15  # each edge independently faded out
    low_contrast_prob: float = 0.1
    clutter: int = 12  # background strokes and blobs
    noise_std: float = 10.0
    colour_jitter: float = 25.0

    def validate(self):
        if not (16 <= self.image_size <= 4096):
            raise ValueError(f"image_size must be in [16, 4096], got {self.image_size}")
        if not (0 <= self.min_objects <= self.max_objects):
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if not (1 <= self.min_size <= self.max_size_frac * self.image_size):
            raise ValueError("need 1 <= min_size <= max_size_frac * image_size")
        for name in ("blur_prob", "fade_edge_prob", "low_contrast_prob", "max_occluded_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def _shape_mask(kind: str, box: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape filling ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    px, py = xx + 0.5, yy + 0.5  # pixel centres
    if kind == "square":
        # signed distance (in px) inside the rectangle
        d = np.minimum(hw - np.abs(px - cx), hh - np.abs(py - cy))
    elif kind in ("circle", "ring"):
        r = np.sqrt(((px - cx) / hw) ** 2 + ((py - cy) / hh) ** 2)
        d = (1 - r) * min(hw, hh)
        if kind == "ring":
            d = np.minimum(d, (r - 0.5) * min(hw, hh))
    elif kind == "diamond":
        d = (1 - np.abs(px - cx) / hw - np.abs(py - cy) / hh) * min(hw, hh) / 1.5
    elif kind == "triangle":  # apex at the top centre, base at the bottom
        t = (py - y0) / max(y1 - y0, 1e-6)  # 0 at apex, 1 at base
        half = t * hw
        d = np.minimum.reduce([half - np.abs(px - cx), py - y0, y1 - py]) * 0.9
    else:
        raise ValueError(kind)
    return np.clip(d + 0.5, 0.0, 1.0)


def _background(rng: np.random.Generator, cfg: ShapesConfig) -> np.ndarray:
    s = cfg.image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    base = rng.uniform(30, 140, size=3)
    grad = rng.uniform(-40, 40, size=(2, 3))
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    # clutter: thin strokes and faint blobs in muted colours (not objects)
    for _ in range(int(rng.integers(0, cfg.clutter + 1))):
        colour = rng.uniform(40, 170, size=3)
        if rng.random() < 0.5:
            x0, y0, x1, y1 = rng.uniform(0, s, size=4)
            n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
            xs = np.clip(np.linspace(x0, x1, n).astype(int), 0, s - 1)
            ys = np.clip(np.linspace(y0, y1, n).astype(int), 0, s - 1)
            img[ys, xs] = colour
        else:
            cx, cy = rng.uniform(0, s, size=2)
            r = rng.uniform(2, s / 6)
            blob = np.exp(-(((xx * s - cx) ** 2 + (yy * s - cy) ** 2) / (2 * r * r)))
            img = img * (1 - 0.5 * blob[..., None]) + colour * 0.5 * blob[..., None]
    return img


def _place_object(rng, cfg: ShapesConfig, grid, owner, visible_px, area_px, num_objects: int):
    """
    Draw an object's box, class and coverage, trying up to 10 times to keep
    every earlier object at least ``1 - max_occluded_frac`` visible.

    Returns:
        (box (4,), (w, h), class index, coverage in [0, 1] over the window, the window) or None.
    """
    s, (yy, xx) = cfg.image_size, grid
    max_size = cfg.max_size_frac * s
    for _attempt in range(10):
        # log-uniform sizes: many small objects, some large
        side = float(np.exp(rng.uniform(np.log(cfg.min_size), np.log(max_size))))
        aspect = float(np.exp(rng.uniform(-0.4, 0.4)))
        w, h = side * aspect, side / aspect
        w, h = min(max(w, cfg.min_size), max_size), min(max(h, cfg.min_size), max_size)
        x0, y0 = rng.uniform(0, s - w), rng.uniform(0, s - h)
        box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float32)
        cat = int(rng.integers(len(CATEGORIES)))
        win = _window(box, s)
        cover = _shape_mask(CATEGORIES[cat][1], box, yy[win], xx[win])
        solid = cover > 0.5
        lost = np.bincount(owner[win][solid] + 1, minlength=num_objects + 1)[1:]
        ok = (
            bool(np.all(visible_px - lost >= (1 - cfg.max_occluded_frac) * area_px))
            if num_objects
            else True
        )
        if ok and solid.sum() >= 4:
            return box, (w, h), cat, cover, win
    return None


def _edge_effects(rng, cfg: ShapesConfig, cover, box, size, grid):
    """The object's opacity (H, W) after blur and faded edges, and which were applied."""
    yy, xx = grid
    fade = [bool(rng.random() < cfg.fade_edge_prob) for _ in EDGES]
    blurred = bool(rng.random() < cfg.blur_prob)
    alpha = cover
    if blurred:
        sigma = float(rng.uniform(1.0, 2.5))
        pil = Image.fromarray((alpha * 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(sigma)
        )
        alpha = np.asarray(pil, dtype=np.float32) / 255.0
    ramp = max(3.0, 0.35 * min(size))
    for e, on in enumerate(fade):
        if on:  # opacity rises linearly from 0 at the edge over `ramp` px
            dist = [xx + 0.5 - box[0], yy + 0.5 - box[1], box[2] - xx - 0.5, box[3] - yy - 0.5][e]
            alpha = alpha * np.clip(dist / ramp, 0.0, 1.0)
    return alpha, blurred, fade


def _annotation(index: int, obj: Dict, owner, grid) -> Dict:
    """COCO annotation of object ``index`` with its visible share and per-edge flags."""
    win = obj["window"]
    yy, xx = grid[0][win], grid[1][win]
    visible = (owner[win] == index) & obj["solid"]
    x0, y0, x1, y1 = (float(v) for v in obj["box"])
    occluded = []
    for e in range(4):
        # the object's own pixels within 2 px of the edge: mostly covered?
        band = [xx < x0 + 2.5, yy < y0 + 2.5, xx > x1 - 3.5, yy > y1 - 3.5][e] & obj["solid"]
        n = band.sum()
        occluded.append(bool(n > 0 and (band & ~visible).sum() > 0.5 * n))
    return dict(
        bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
        category_id=obj["category_id"],
        area=round((x1 - x0) * (y1 - y0), 2),
        iscrowd=0,
        visible_frac=round(visible.sum() / max(obj["area_px"], 1), 3),
        edge_flags={"blurred": [obj["blurred"] or f for f in obj["fade"]], "occluded": occluded},
    )


def _object_colour(rng, cfg: ShapesConfig, cat: int, img: np.ndarray, win, solid) -> np.ndarray:
    """The category's colour, jittered; sometimes pulled towards the local background."""
    colour = np.array(CATEGORIES[cat][2], dtype=np.float32) + rng.normal(0, cfg.colour_jitter, 3)
    if rng.random() < cfg.low_contrast_prob:
        local = img[win][solid].mean(axis=0) if solid.any() else img.mean(axis=(0, 1))
        colour = local + (colour - local) * float(rng.uniform(0.25, 0.45))
    return colour


def render_image(index: int, seed: int, cfg: ShapesConfig) -> Tuple[np.ndarray, List[Dict]]:
    """
    Render image ``index`` of the split with ``seed``.

    Returns:
        (H, W, 3) uint8 RGB image and its annotations: dicts with
        ``bbox`` (x, y, w, h), ``category_id``, ``edge_flags``.
    """
    rng = np.random.default_rng([seed, index])
    s = cfg.image_size
    img = _background(rng, cfg)
    grid = np.mgrid[0:s, 0:s].astype(np.float32)  # (yy, xx)
    owner = np.full((s, s), -1, dtype=np.int32)  # topmost object per pixel
    objects: List[Dict] = []
    visible_px = np.zeros(0, dtype=np.int64)  # per object: pixels it still owns
    area_px = np.zeros(0, dtype=np.int64)  # per object: pixels of its solid shape
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        placed = _place_object(rng, cfg, grid, owner, visible_px, area_px, len(objects))
        if placed is None:
            continue
        box, size, cat, cover, win = placed
        wgrid = (grid[0][win], grid[1][win])
        solid = cover > 0.5
        alpha, blurred, fade = _edge_effects(rng, cfg, cover, box, size, wgrid)
        colour = _object_colour(rng, cfg, cat, img, win, solid)
        img[win] = img[win] * (1 - alpha[..., None]) + np.clip(colour, 0, 255) * alpha[..., None]
        owner_win = owner[win]  # a view: writing it writes the owner map
        if objects:
            visible_px -= np.bincount(owner_win[solid] + 1, minlength=len(objects) + 1)[1:]
        owner_win[solid] = len(objects)
        visible_px = np.append(visible_px, solid.sum())
        area_px = np.append(area_px, solid.sum())
        objects.append(
            dict(
                box=box,
                category_id=CATEGORIES[cat][0],
                solid=solid,
                window=win,
                area_px=int(solid.sum()),
                blurred=blurred,
                fade=fade,
            )
        )

    img = np.clip(img + rng.normal(0, cfg.noise_std, size=img.shape), 0, 255).astype(np.uint8)
    return img, [_annotation(j, o, owner, grid) for j, o in enumerate(objects)]


def _render_and_save(job) -> Tuple[str, List[Dict]]:
    i, seed, cfg, image_dir = job
    img, anns = render_image(i, seed, cfg)
    file_name = f"{i:06d}.png"
    Image.fromarray(img).save(os.path.join(image_dir, file_name))
    return file_name, anns


# Forked workers inherit the imported modules; spawned ones would import torch and
# detectron2 again. They run only numpy and PIL, which is safe after a fork.
_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def write_split(
    root: str,
    split: str,
    num_images: int,
    seed: int,
    cfg: Optional[ShapesConfig] = None,
    progress: bool = True,
) -> str:
    """
    Write ``root/split/*.png`` and ``root/annotations/instances_{split}.json``;
    return the json path.
    """
    cfg = cfg or ShapesConfig()
    cfg.validate()
    image_dir = os.path.join(root, split)
    ann_dir = os.path.join(root, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    images, annotations = [], []
    jobs = [(i, seed, cfg, image_dir) for i in range(num_images)]
    # image i depends only on (seed, i): rendering in worker processes gives the same files
    workers = min(os.cpu_count() or 1, 8) if num_images >= 64 else 1
    pool = multiprocessing.get_context(_START_METHOD).Pool(workers) if workers > 1 else None
    try:
        rendered = (
            pool.imap(_render_and_save, jobs, chunksize=16) if pool else map(_render_and_save, jobs)
        )
        if progress:
            from tqdm import tqdm

            rendered = tqdm(
                rendered, total=num_images, desc=f"generating shapes/{split}", unit="img"
            )
        for i, (file_name, anns) in enumerate(rendered):
            images.append(
                dict(id=i + 1, file_name=file_name, height=cfg.image_size, width=cfg.image_size)
            )
            for a in anns:
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, **a))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    info = dict(
        description="gfl-d2 generated shapes", seed=seed, num_images=num_images, config=asdict(cfg)
    )
    return _write_coco_json(
        os.path.join(ann_dir, f"instances_{split}.json"), info, images, annotations
    )


def _write_coco_json(
    json_path: str, info: dict, images: List[Dict], annotations: List[Dict]
) -> str:
    """The split's COCO json, written whole or not at all; its path."""
    categories = [dict(id=c, name=n, supercategory="shape") for c, n, _ in CATEGORIES]
    data = dict(info=info, images=images, annotations=annotations, categories=categories)
    tmp = f"{json_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, json_path)  # a half-written json is never left behind
    return json_path


def _split_is_current(json_path: str, seed: int, num_images: int, cfg: ShapesConfig) -> bool:
    if not os.path.isfile(json_path):
        return False
    try:
        with open(json_path) as f:
            info = json.load(f).get("info", {})
    except (OSError, ValueError):
        return False
    return (
        info.get("seed") == seed
        and info.get("config") == asdict(cfg)
        and info.get("num_images") == num_images
    )


def build_shapes_dataset(
    root: Optional[str] = None,
    splits: Sequence[Tuple[str, int, int]] = (("train", 4000, 0), ("val", 500, 1)),
    cfg: Optional[ShapesConfig] = None,
    progress: bool = True,
) -> Dict[str, str]:
    """
    Generate the splits ``(name, num_images, seed)`` under ``root`` (default
    ``$DETECTRON2_DATASETS/shapes``, ``./datasets/shapes``), skipping splits
    already generated with the same settings. Returns ``{split: json_path}``.
    """
    cfg = cfg or ShapesConfig()
    root = root or os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes")
    paths = {}
    for split, num_images, seed in splits:
        json_path = os.path.join(root, "annotations", f"instances_{split}.json")
        if not _split_is_current(json_path, seed, num_images, cfg):
            logger.info(f"Generating {num_images} images of shapes/{split} in {root}")
            write_split(root, split, num_images, seed, cfg, progress=progress)
        paths[split] = json_path
    return paths


def register_shapes(
    root: Optional[str] = None, prefix: str = "shapes", splits: Sequence[str] = ("train", "val")
) -> List[str]:
    """
    Register ``{prefix}_{split}`` with detectron2's COCO registration (images
    in ``root/split``, annotations in ``root/annotations``). Registering again
    is a no-op. Returns the dataset names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    root = root or os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes")
    names = []
    for split in splits:
        name = f"{prefix}_{split}"
        names.append(name)
        if name in DatasetCatalog.list():
            continue
        register_coco_instances(
            name,
            {},
            os.path.join(root, "annotations", f"instances_{split}.json"),
            os.path.join(root, split),
        )
        MetadataCatalog.get(name).set(thing_classes=[n for _, n, _ in CATEGORIES])
    return names


def prepare_shapes(
    split: str, num_images: int, seed: int, root: Optional[str] = None, image_size: int = 128
) -> str:
    """
    Make sure split ``split`` of the shapes dataset exists (generating it if
    needed) and is registered; return its dataset name (``shapes_{split}``).
    Meant for configs: ``names=L(prepare_shapes)(split="val", ...)``.
    """
    from detectron2.data import MetadataCatalog
    from detectron2.utils import comm

    cfg = ShapesConfig(image_size=image_size)
    root = root or os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "shapes")
    # one process per machine writes the files; the others wait for it
    if comm.get_local_rank() == 0:
        build_shapes_dataset(root, [(split, num_images, seed)], cfg)
    comm.synchronize()
    paths = build_shapes_dataset(root, [(split, num_images, seed)], cfg)
    (name,) = register_shapes(root, splits=[split])
    registered = MetadataCatalog.get(name).json_file
    if os.path.abspath(registered) != os.path.abspath(paths[split]):
        raise ValueError(
            f"dataset {name!r} is already registered with {registered}, not {paths[split]}"
        )
    return name
