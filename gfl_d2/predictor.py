"""A predictor for LazyConfig models, the counterpart of detectron2's ``DefaultPredictor``."""

import glob
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Instances

from .checkpoint import load_trained_weights
from .cpu_inference import for_cpu_inference
from .data.folder_dataset import IMAGE_EXTENSIONS
from .devices import resolve_device

__all__ = [
    "LazyPredictor",
    "dataset_metadata",
    "list_images",
    "test_time_augmentations",
    "to_model_input",
]


def list_images(inputs: Sequence[str]) -> List[str]:
    """
    Image files named in ``inputs``, folders expanded (sorted); a clear error for a missing
    path.
    """
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(
                f
                for f in glob.glob(os.path.join(path, "*"))
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
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


def test_time_augmentations(cfg) -> Tuple[T.AugmentationList, str]:
    """The test-time transforms of ``cfg.dataloader.test.mapper`` and the image format it reads."""
    mapper = cfg.dataloader.test.mapper
    return T.AugmentationList(
        [instantiate(a) for a in mapper.get("augmentations", [])]
    ), mapper.get("image_format", "BGR")


def to_model_input(image: np.ndarray, augmentations: T.AugmentationList) -> torch.Tensor:
    """
    (H, W, 3) uint8 image -> the (3, H', W') float tensor the model takes, as the test loader
    makes it.
    """
    aug = T.AugInput(image)
    augmentations(aug)
    return torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)).astype("float32"))


class LazyPredictor:
    """
    Builds ``cfg.model``, loads the trained ``weights`` (default
    ``cfg.train.init_checkpoint``; :func:`~gfl_d2.checkpoint.load_trained_weights`)
    and runs it on single images with the test-time resize of
    ``cfg.dataloader.test.mapper``; ``cfg.train.cpu_inference`` ("frozen")
    applies on the CPU (:mod:`gfl_d2.cpu_inference`).
    """

    def __init__(self, cfg, weights: Optional[str] = None):
        device = resolve_device(cfg.train.get("device", "cuda"))
        model = instantiate(cfg.model).to(device).eval()
        weights = weights if weights is not None else cfg.train.init_checkpoint
        load_trained_weights(model, weights)
        self.model = for_cpu_inference(model, cfg.train.get("cpu_inference", "eager")).eval()
        self.augmentations, self.input_format = test_time_augmentations(cfg)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Instances:
        """(H, W, 3) uint8 image in ``self.input_format`` -> its Instances, on the CPU."""
        h, w = image.shape[:2]
        (out,) = self.model(
            [{"image": to_model_input(image, self.augmentations), "height": h, "width": w}]
        )
        return out["instances"].to("cpu")
