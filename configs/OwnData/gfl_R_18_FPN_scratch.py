"""
GFL on your own dataset folder (COCO, Pascal VOC or YOLO layout), trained from
scratch: the embedded config's small ResNet-18/GN model, which trains on a
CPU. The class names and their number come from the dataset's files.

    python tools/train_net.py --config-file configs/OwnData/gfl_R_18_FPN_scratch.py \
        dataset.root=/path/to/data

``dataset.layout`` (auto, coco, voc, yolo), ``dataset.train_split`` /
``dataset.test_split`` (train / val), and the image size
``dataset.min_size`` / ``dataset.max_size`` (shorter / longer side; larger
images are scaled down to it, smaller ones keep their size unless
``dataset.enlarge=True``; 0 keeps every image's size) are the settings of the
data. The schedule scales with ``train.max_iter`` (warm-up and steps are
fractions of it).
"""

from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf

from gfl_d2.data import BoxDatasetMapper
from gfl_d2.data.augmentations import resize_and_flip
from gfl_d2.data.folders import dataset_num_classes, register_dataset
from gfl_d2.evaluation import COCOEvaluatorWithCurves

from ..Synthetic.gfl_R_18_FPN_shapes import model, optimizer, train

# "???": must be given on the command line
dataset = dict(
    root="???",
    layout="auto",
    train_split="train",
    test_split="val",
    min_size=320,
    max_size=533,
    enlarge=False,
)

model.num_classes = L(dataset_num_classes)(
    root="${dataset.root}", split="${dataset.train_split}", layout="${dataset.layout}"
)
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names=L(register_dataset)(
            root="${dataset.root}", split="${dataset.train_split}", layout="${dataset.layout}"
        ),
    ),
    mapper=L(BoxDatasetMapper)(
        is_train=True,
        augmentations=L(resize_and_flip)(
            min_size="${dataset.min_size}",
            max_size="${dataset.max_size}",
            enlarge="${dataset.enlarge}",
        ),
        image_format="RGB",
    ),
    total_batch_size=8,
    num_workers=2,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(
        names=L(register_dataset)(
            root="${dataset.root}", split="${dataset.test_split}", layout="${dataset.layout}"
        ),
        filter_empty=False,
    ),
    mapper=L(BoxDatasetMapper)(
        is_train=False,
        augmentations=L(resize_and_flip)(
            min_size="${dataset.min_size}",
            max_size="${dataset.max_size}",
            enlarge="${dataset.enlarge}",
            flip=False,
        ),
        image_format="RGB",
    ),
    num_workers=2,
)
# per-class AP (detectron2's table) and a precision-recall picture per
# evaluation, next to metrics.json
dataloader.evaluator = L(COCOEvaluatorWithCurves)(
    dataset_name="${..test.dataset.names}",
    output_dir="${train.output_dir}/inference",
    plot_dir="${train.output_dir}",
    allow_cached_coco=False,
)

train.max_iter = 2000
train.eval_period = 500  # and the best checkpoint by bbox AP is kept as model_best.pth
train.checkpointer.period = 500
train.output_dir = "./output/own_data/gfl_R_18_FPN_scratch"

lr_multiplier = L(WarmupParamScheduler)(
    # fractions of train.max_iter: steps at 77% and 91%, 5% warm-up
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[77, 91], num_updates=100
    ),
    warmup_length=0.05,
    warmup_method="linear",
    warmup_factor=0.001,
)
