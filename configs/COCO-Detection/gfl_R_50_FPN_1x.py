"""
GFL R-50-FPN, 1x (12 epochs = 90k iterations at 16 images a batch), single
scale (shorter side 800, longer <= 1333). Published: 40.2 AP on COCO minival.

    python tools/train_net.py --config-file configs/COCO-Detection/gfl_R_50_FPN_1x.py --num-gpus 8
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from ..common.models.gfl import model

dataloader = get_config("common/data/coco.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train

dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 16
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)
]

optimizer.lr = 0.01
optimizer.momentum = 0.9
optimizer.weight_decay = 1e-4
# the reference decays every parameter, GroupNorm's included
optimizer.params.weight_decay_norm = 1e-4

# steps at epochs 8 and 11 of 12 (60k, 80k), 500 iterations of linear warm-up
lr_multiplier.warmup_length = 500 / 90000
lr_multiplier.warmup_factor = 0.001

train.max_iter = 90000
train.seed = -1  # -1: a random seed; set one for a reproducible run
train.check_bins = 200  # images sampled to measure the bins' fit to the regression targets (0: off)
# gradient clipping (off, as in the reference); clip_type "norm" or "value"
train.clip_grad = dict(enabled=False, clip_type="norm", clip_value=35.0, norm_type=2.0)
# torchvision's ImageNet ResNet-50 (pytorch-style, RGB, std-normalised), as the release
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
