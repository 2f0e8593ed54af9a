"""
NanoDet-Plus-m at 320x320 (RangiLyu/nanodet's ``nanodet-plus-m_320.yml``):
ShuffleNetV2 1.0x, GhostPAN 96, NanoDet-Plus's head, n = 7. Published: 27.0
mAP on COCO val2017. Its released weights convert with
``tools/convert_mmdet_checkpoint.py`` (a NanoDet ``.ckpt`` or ``.pth``; the EMA
weights of a ``.ckpt``) and give NanoDet's detections on the same network input
(tests/test_nanodet_e2e.py).

Evaluation resizes every image to 320x320 without keeping its aspect ratio,
as NanoDet does (NanoDet warps with OpenCV, detectron2 resizes with PIL: the
pixels fed to the network differ slightly). Training here is NanoDet-Plus's
(``gfl_d2.modeling.NanoDetPlus``): dynamic soft-label assignment from the
training-only auxiliary head, whose losses train both heads (detached from the
backbone and neck after 10 epochs), with NanoDet's optimiser and schedule (AdamW
1e-3, weight decay 0.05, 500 warm-up iterations, cosine to 5e-5, gradient
clipping at 35), batch 96 for 300 epochs, its weight EMA (decay 0.9998 with
NanoDet's ramp over the first iterations; evaluated, and saved next to the
trained weights) and its augmentations (``gfl_d2.data.nanodet_augmentations``:
scale 0.6-1.4, stretch 0.8-1.2 per axis, translation 0.2, flip 0.5, to
320x320; brightness 0.2, contrast 0.6-1.4, saturation 0.5-1.2).
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from gfl_d2.data.nanodet_augmentations import NanoDetColorJitter, NanoDetWarp

from ...common.models.nanodet_plus import model

dataloader = get_config("common/data/coco.py").dataloader
train = get_config("common/train.py").train

dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.image_format = "BGR"
# NanoDet-Plus's pipeline (nanodet-plus-m_320.yml): perspective, rotation and shear are 0 there
dataloader.train.mapper.augmentations = [
    L(NanoDetWarp)(
        output_size=(320, 320),
        scale=(0.6, 1.4),
        stretch=((0.8, 1.2), (0.8, 1.2)),
        translate=0.2,
        flip=0.5,
    ),
    L(NanoDetColorJitter)(brightness=0.2, contrast=(0.6, 1.4), saturation=(0.5, 1.2)),
]
dataloader.train.total_batch_size = 96
dataloader.test.mapper.image_format = "BGR"
dataloader.test.mapper.augmentations = [L(T.Resize)(shape=(320, 320))]

optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 0.001
optimizer.weight_decay = 0.05

# 300 epochs of COCO train2017 (117,266 images) at 96 images a batch
train.max_iter = 300 * 117266 // 96
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.05),
    warmup_length=500 / train.max_iter,
    warmup_method="linear",
    warmup_factor=0.0001,
)
train.seed = -1
train.check_bins = 200
train.clip_grad = dict(enabled=True, clip_type="norm", clip_value=35.0, norm_type=2.0)
# NanoDet's ExpMovingAverager: decay 0.9998, ramped by 1 - exp(-(k + 1) / 2000) at update k
train.ema = dict(enabled=True, decay=0.9998, warmup=2000)
# NanoDet starts from torchvision's ImageNet ShuffleNetV2; from scratch here
train.init_checkpoint = ""
