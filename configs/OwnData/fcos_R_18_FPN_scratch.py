"""
detectron2's own FCOS on your dataset folder, with the backbone, data and
schedule of ``gfl_R_18_FPN_scratch.py`` (the baseline GFL is compared with):

    python tools/train_net.py --config-file configs/OwnData/fcos_R_18_FPN_scratch.py \
        dataset.root=/path/to/data
"""

from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config

from .gfl_R_18_FPN_scratch import dataloader, dataset, lr_multiplier, optimizer, train
from .gfl_R_18_FPN_scratch import model as _gfl

model = get_config("common/models/fcos.py").model
model.backbone = _gfl.backbone
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
model.num_classes = _gfl.num_classes
model.pixel_mean = _gfl.pixel_mean
model.pixel_std = _gfl.pixel_std

train.output_dir = "./output/own_data/fcos_R_18_FPN_scratch"
