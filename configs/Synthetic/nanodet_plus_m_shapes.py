"""
NanoDet-Plus-m (``configs/common/models/nanodet_plus.py``) trained from
scratch on the generated shapes dataset (5 classes), on the quick start's data
and number of iterations (1600 of 8 images), for ``tools/edge_training.py``'s
comparison with the quick start's ResNet-18 GFL.

Input: the 128x128 images resized to 256x256, as NanoDet resizes to its fixed
input: at 128 the shapes' smallest objects (8 px) would hold at most one point
of the stride-8 level strictly inside, NanoDet-Plus's candidate rule.
Recipe: NanoDet-Plus's (``configs/COCO-Detection/NanoDet/nanodet_plus_m_320.py``):
dynamic soft-label assignment from the auxiliary head (detached after 10
epochs: 3,750 iterations here, after the end of this short schedule), AdamW
(learning rate 1e-3, weight decay 0.05, gradient clipping at 35), linear
warm-up then cosine to 5% of the rate, weight EMA with NanoDet's ramp (the
evaluation runs the average), NanoDet's warp and colour jitter to 256x256.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from gfl_d2.data.nanodet_augmentations import NanoDetColorJitter, NanoDetWarp

from ..common.models.nanodet_plus import model
from .gfl_R_18_FPN_shapes import dataloader, train

SIZE = 256

model.num_classes = 5
model.aux_detach_iter = 10 * 3000 // 8  # 10 epochs of the 3,000 training images

dataloader.train.mapper.image_format = "BGR"
dataloader.train.mapper.augmentations = [
    L(NanoDetWarp)(
        output_size=(SIZE, SIZE),
        scale=(0.6, 1.4),
        stretch=((0.8, 1.2), (0.8, 1.2)),
        translate=0.2,
        flip=0.5,
    ),
    L(NanoDetColorJitter)(brightness=0.2, contrast=(0.6, 1.4), saturation=(0.5, 1.2)),
]
dataloader.train.num_workers = 0
dataloader.test.mapper.image_format = "BGR"
dataloader.test.mapper.augmentations = [L(T.Resize)(shape=(SIZE, SIZE))]
dataloader.test.num_workers = 0

optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 0.001
optimizer.weight_decay = 0.05

train.max_iter = 1600
train.output_dir = "./output/nanodet_plus_m_shapes"
train.clip_grad = dict(enabled=True, clip_type="norm", clip_value=35.0, norm_type=2.0)
train.ema = dict(enabled=True, decay=0.9998, warmup=2000)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.05),
    warmup_length=100 / 1600,
    warmup_method="linear",
    warmup_factor=0.001,
)
