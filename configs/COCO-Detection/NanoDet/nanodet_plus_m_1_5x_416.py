"""
NanoDet-Plus-m-1.5x at 416x416 (``nanodet-plus-m-1.5x_416.yml``). Published:
34.1 mAP on COCO val2017.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .nanodet_plus_m_1_5x_320 import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.mapper.augmentations[0].output_size = (416, 416)
dataloader.test.mapper.augmentations = [L(T.Resize)(shape=(416, 416))]
