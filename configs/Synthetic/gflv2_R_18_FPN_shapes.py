"""
GFL V2: the ablation base with the distribution-guided quality predictor.
``gfl_R_18_FPN_shapes.py`` (n = 16) changed in nothing else, for the
V2-against-V1 comparison of ``tools/ablation.py``.
"""

from .gfl_R_18_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train

model.quality = "dgqp"
train.output_dir = "./output/gflv2_R_18_FPN_shapes"
