"""
GFL V2 R-50-FPN, 1x: GFL V1's detector, data and schedule, with the
distribution-guided quality predictor (top-4 probabilities and their mean per
edge, 1x1 convs 20 -> 64 -> 1) multiplying the classification score, and QFL
on the product. Published: 41.0 AP on COCO minival, 41.1 on test-dev
(V1: 40.2 / 40.3), at the same FPS.

    python tools/train_net.py --config-file configs/COCO-Detection/gflv2_R_50_FPN_1x.py --num-gpus 8
"""

from .gfl_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.quality = "dgqp"
model.head.dgqp_topk = 4
model.head.dgqp_channels = 64
model.head.dgqp_add_mean = True
