"""
GFL R-50-FPN, 2x (24 epochs = 180k iterations at 16 images a batch),
multi-scale training (shorter side drawn from [480, 960], longer <= 1333).
Published: 42.8 AP on COCO minival, 43.1 on test-dev.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from .gfl_R_50_FPN_1x import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_2x
# steps at epochs 16 and 22 of 24 (120k, 160k), 500 iterations of linear warm-up
lr_multiplier.warmup_length = 500 / 180000
lr_multiplier.warmup_factor = 0.001

dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(480, 960), max_size=1333, sample_style="range"),
    L(T.RandomFlip)(horizontal=True),
]
train.max_iter = 180000
