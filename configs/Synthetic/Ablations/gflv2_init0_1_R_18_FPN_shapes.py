"""
GFL V2 with its quality predictor initialised at std 0.1 instead of 0.01.
A diagnostic of the short schedule: at std 0.01 each of the predictor's two
convs gets gradients scaled by the other's tiny weights, so within 500
iterations only its output bias moves and the quality stays constant.
"""

from ..gflv2_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train

model.head.dgqp_init_std = 0.1
train.output_dir = "./output/gflv2_init0_1_R_18_FPN_shapes"
