"""
A small GFL trained from scratch on the generated "shapes" dataset (128x128
images, 5 classes), sized for a laptop CPU, with the paper's settings (n = 16
bins): the base of the embedded default (``gfl_R_18_FPN_shapes_quickstart.py``,
which ``python tools/train_net.py`` runs with no --config-file), of the other
detectors on this data and of the ablation study.

The dataset is generated on first use into $DETECTRON2_DATASETS/shapes
(default ./datasets/shapes) and registered as shapes_train / shapes_val.
"""

import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from gfl_d2.data import BoxDatasetMapper, prepare_shapes

from ..common.models.gfl import model

# ResNet-18 with GroupNorm, from scratch; narrow FPN and head
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "GN"
del model.backbone.bottom_up.stages.stride_in_1x1  # BasicBlock has no 1x1 conv
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 64
model.backbone.top_block.out_channels = 64
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.num_classes = 5
model.pixel_mean = [128.0, 128.0, 128.0]
model.pixel_std = [64.0, 64.0, 64.0]

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names=L(prepare_shapes)(split="train", num_images=3000, seed=0, image_size=128)
    ),
    mapper=L(BoxDatasetMapper)(
        is_train=True,
        augmentations=[L(T.RandomFlip)(horizontal=True)],
        image_format="RGB",
    ),
    total_batch_size=8,
    num_workers=2,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names=L(prepare_shapes)(split="val", num_images=300, seed=1, image_size=128),
        filter_empty=False,
    ),
    mapper=L(BoxDatasetMapper)(is_train=False, augmentations=[], image_format="RGB"),
    num_workers=2,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.02
optimizer.params.weight_decay_norm = 0.0

train = get_config("common/train.py").train
train.max_iter = 2200
train.device = "cuda" if torch.cuda.is_available() else "cpu"  # the log says which
train.output_dir = "./output/gfl_R_18_FPN_shapes_n16"
train.init_checkpoint = ""
train.eval_period = 0  # evaluate once, at the end
train.log_period = 20
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 2
train.seed = -1  # -1: a random seed; set one for a reproducible run
train.check_bins = 200  # images sampled to measure the bins' fit to the regression targets (0: off)
# gradient clipping (off, as in the reference); clip_type "norm" or "value"
train.clip_grad = dict(enabled=False, clip_type="norm", clip_value=35.0, norm_type=2.0)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[1700, 2000], num_updates=2200
    ),
    warmup_length=100 / 2200,
    warmup_method="linear",
    warmup_factor=0.001,
)
