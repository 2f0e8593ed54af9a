"""
Fine-tune NanoDet-Plus-m 320 trained on COCO on your own dataset folder (COCO,
Pascal VOC or YOLO layout), with another number of classes. Start from
NanoDet's released weights (its Lightning ``.ckpt``, whose EMA weights are
taken, or its ``.pth``), converted once:

    python tools/convert_mmdet_checkpoint.py nanodet-plus-m_320_checkpoint.ckpt \
        pretrained/nanodet_plus_m_320_coco.pth
    python tools/train_net.py --config-file configs/OwnData/nanodet_plus_m_320_finetune.py \
        dataset.root=/path/to/data train.init_checkpoint=pretrained/nanodet_plus_m_320_coco.pth

Every tensor loads, the auxiliary head's too where the file has it, except
the class rows: the head's output convolutions hold the class logits and the
edge distributions in one layer, so a class change loads their box rows and
keeps the model's initialisation for the class rows (the log names them); the
auxiliary head's classification layer (``aux_head.cls_score``) keeps its
initialisation.

Recipe: NanoDet-Plus's (``configs/COCO-Detection/NanoDet/nanodet_plus_m_320.py``:
AdamW, cosine, gradient clipping, weight EMA, its warp and colour jitter to
320x320), shortened to 3,000 iterations of 16 images with a 5% warm-up; the
auxiliary head is detached after 10 epochs of 500 images. The schedule's
fractions follow ``train.max_iter``; the detaching does not (set
``model.aux_detach_iter``).
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from gfl_d2.data.folders import dataset_num_classes

from .gfl_R_18_FPN_scratch import dataloader, dataset

model, optimizer, train, lr_multiplier, coco_data = LazyConfig.load_rel(
    "../COCO-Detection/NanoDet/nanodet_plus_m_320.py",
    ("model", "optimizer", "train", "lr_multiplier", "dataloader"),
)

model.num_classes = L(dataset_num_classes)(
    root="${dataset.root}", split="${dataset.train_split}", layout="${dataset.layout}"
)
model.aux_detach_iter = 10 * 500 // 16

# the folder's images, NanoDet's input: BGR, its augmentations to 320x320, resized to it to test
for split in ("train", "test"):
    dataloader[split].mapper.image_format = "BGR"
    dataloader[split].mapper.augmentations = coco_data[split].mapper.augmentations
dataloader.test.mapper.augmentations = [L(T.Resize)(shape=(320, 320))]
dataloader.train.total_batch_size = 16

# the converted COCO weights: train.init_checkpoint=pretrained/nanodet_plus_m_320_coco.pth
train.init_checkpoint = "???"
train.max_iter = 3000
train.eval_period = 500  # and the best checkpoint by bbox AP is kept as model_best.pth
train.checkpointer.period = 500
train.output_dir = "./output/own_data/nanodet_plus_m_320_finetune"
lr_multiplier.warmup_length = 0.05
