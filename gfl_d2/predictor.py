"""A predictor for LazyConfig models, the counterpart of detectron2's ``DefaultPredictor``."""
import glob
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Instances

from .engine import resolve_device

__all__ = ["LazyPredictor", "dataset_metadata", "list_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(inputs: Sequence[str]) -> List[str]:
    """Image files named in ``inputs``, folders expanded (sorted); a clear error for a missing path."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    if not files:
        raise FileNotFoundError(f"no images found in {list(inputs)}")
    return files


def dataset_metadata(cfg, split: str = "test"):
    """Metadata (class names, ...) of the config's ``dataloader.{split}`` dataset."""
    names = cfg.dataloader[split].dataset.names
    if not isinstance(names, str):
        names = instantiate(names)  # a LazyCall that prepares and registers the dataset
    if not isinstance(names, str):
        names = names[0]
    return MetadataCatalog.get(names)


class LazyPredictor:
    """
    Builds ``cfg.model``, loads ``weights`` (default ``cfg.train.init_checkpoint``)
    and runs it on single images with the test-time resize of
    ``cfg.dataloader.test.mapper``.
    """

    def __init__(self, cfg, weights: Optional[str] = None):
        device = resolve_device(cfg.train.get("device", "cuda"))
        self.model = instantiate(cfg.model).to(device).eval()
        weights = weights if weights is not None else cfg.train.init_checkpoint
        if not weights:
            raise ValueError("no weights given: set train.init_checkpoint=/path/to/model.pth")
        DetectionCheckpointer(self.model).load(weights)
        mapper = cfg.dataloader.test.mapper
        self.augmentations = T.AugmentationList([instantiate(a) for a in mapper.get("augmentations", [])])
        self.input_format = mapper.get("image_format", "BGR")

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Instances:
        """(H, W, 3) uint8 image in ``self.input_format`` -> its Instances, on the CPU."""
        h, w = image.shape[:2]
        aug = T.AugInput(image)
        self.augmentations(aug)
        tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)).astype("float32"))
        (out,) = self.model([{"image": tensor, "height": h, "width": w}])
        return out["instances"].to("cpu")
