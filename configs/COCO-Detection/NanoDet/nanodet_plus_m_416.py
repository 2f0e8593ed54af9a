"""
NanoDet-Plus-m at 416x416 (``nanodet-plus-m_416.yml``): the 320 config's
model and recipe at NanoDet's 416 input. Published: 30.4 mAP on COCO val2017.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .nanodet_plus_m_320 import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper.augmentations[0].output_size = (416, 416)
dataloader.test.mapper.augmentations = [L(T.Resize)(shape=(416, 416))]
