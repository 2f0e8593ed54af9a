"""
The embedded default, which ``python tools/train_net.py`` runs with no
--config-file: ``gfl_R_18_FPN_shapes.py`` (the small GFL on the generated
shapes dataset, with the paper's settings; the ablation study's baseline) with
bins fitted to this data, a ResNet-18 of half the width, three times the
learning rate, a shorter schedule (1600 iterations of 8 images) and images read
in the training process: aimed at 42 AP within 10 minutes on a 2-core CPU
(measured from a fresh clone: projects/GFL/results/quickstart_cpu_2cores.md).

Bins: the bin check (``train.check_bins``, 200 training images) finds 99% of
the regression targets within about 5 strides (median 1.8, all on P3), so 12
bins half a stride wide (``model.head.box2box_transform.reg_max=12`` and ``.bin_width=0.5``: the
head's box layer follows, 4 x 13 channels) cover 6 strides at twice the
paper's resolution, instead of 16 one-stride bins mostly unused (the ablation's
n and Δ rows, ablation_shapes.md). Backbone: ResNet-18 with 32-64-128-256
channels (stem 32), 1.9x faster per iteration on the CPU than the 64-channel
one; the FPN and head keep 64 channels. Learning rate: 0.06, three times the
shapes configs' 0.02, which was the top of the learning-rate grid for GFL
(lr_tuning_shapes.md). Loading: no loader worker processes, which on a CPU
with few cores would compete with the training threads for them; the images
go through the base's ``BoxDatasetMapper`` (detectron2's ``DatasetMapper``,
same output, all boxes of an image transformed at once).
"""

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from gfl_d2.modeling.backbone import make_basic_stages

from .gfl_R_18_FPN_shapes import dataloader, model, optimizer, train  # noqa: F401

model.head.box2box_transform.reg_max = 12
model.head.box2box_transform.bin_width = 0.5
model.backbone.bottom_up.stem.out_channels = 32
model.backbone.bottom_up.stages = L(make_basic_stages)(depth=18, width=32, norm="GN")

optimizer.lr = 0.06

dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

train.max_iter = 1600
train.output_dir = "./output/gfl_R_18_FPN_shapes"

lr_multiplier = L(WarmupParamScheduler)(
    # fractions of train.max_iter: steps at 77% and 91%, 100 warm-up iterations
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[77, 91], num_updates=100
    ),
    warmup_length=100 / 1600,
    warmup_method="linear",
    warmup_factor=0.001,
)
