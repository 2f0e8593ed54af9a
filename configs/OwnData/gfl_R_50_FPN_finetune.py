"""
Fine-tune GFL R-50-FPN trained on COCO on your own dataset folder (COCO,
Pascal VOC or YOLO layout), with another number of classes. Start from the
published MMDetection checkpoint (https://download.openmmlab.com/mmdetection/v2.0/gfl/gfl_r50_fpn_1x_coco/gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth),
converted once to detectron2's names, or from any GFL R-50 checkpoint of gfl-d2:

    python tools/convert_mmdet_checkpoint.py gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth \
        pretrained/gfl_R_50_FPN_1x_coco.pth
    python tools/train_net.py --config-file configs/OwnData/gfl_R_50_FPN_finetune.py \
        dataset.root=/path/to/data train.init_checkpoint=pretrained/gfl_R_50_FPN_1x_coco.pth

Every tensor loads except the classification layer (``head.cls_score``),
whose shape follows the number of classes: it keeps its fresh initialisation,
bias at GFL's prior probability 0.01, and the log names it and says why.

Learning rate: the linear scaling rule, lr = 0.01 x batch / 16 (the COCO
schedule's 0.01 at 16 images), here 0.0025 at 4 images a batch. Keep to it
when changing dataloader.train.total_batch_size: QFL diverges with a large lr
at a small batch (then lower the lr, lengthen the warm-up, or turn on
train.clip_grad). Schedule: 3,000 iterations (24 epochs of 500 images) with
steps at 75% and 90% of train.max_iter and 10% warm-up, all fractions of
train.max_iter, so that train.max_iter=N alone rescales it (about 20-30 epochs
of the training set is a good start).
"""

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from gfl_d2.data.folders import dataset_num_classes

from .gfl_R_18_FPN_scratch import dataloader, dataset, lr_multiplier

model, optimizer, train = LazyConfig.load_rel(
    "../COCO-Detection/gfl_R_50_FPN_1x.py", ("model", "optimizer", "train")
)

model.num_classes = L(dataset_num_classes)(
    root="${dataset.root}", split="${dataset.train_split}", layout="${dataset.layout}"
)
# the COCO model's input size; smaller objects than COCO's may want more (dataset.min_size=1024)
dataset.min_size = 800
dataset.max_size = 1333
dataset.enlarge = True  # as the COCO model was trained
dataloader.train.total_batch_size = 4

optimizer.lr = 0.01 * 4 / 16  # linear scaling rule from the COCO schedule (0.01 at 16 images)

train.init_checkpoint = (
    "???"  # the converted COCO weights: train.init_checkpoint=pretrained/gfl_R_50_FPN_1x_coco.pth
)
train.max_iter = 3000
train.eval_period = 500  # and the best checkpoint by bbox AP is kept as model_best.pth
train.checkpointer.period = 500
train.output_dir = "./output/own_data/gfl_R_50_FPN_finetune"

# fractions of train.max_iter: steps at 75% and 90%, 10% warm-up
lr_multiplier.scheduler.milestones = [75, 90]
lr_multiplier.warmup_length = 0.1
