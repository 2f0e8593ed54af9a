"""
The student of the distillation study on the embedded shapes dataset, alone:
the quick-start architecture (ResNet-18 of half width, 64-channel FPN and
head; ``gfl_R_18_FPN_shapes_quickstart.py``, its schedule and learning rate)
with the bins of its teacher, ``gfl_R_18_FPN_shapes.py`` (n = 16 bins one
stride wide), which Localization Distillation needs.
``gfl_R_18_half_FPN_shapes_ld.py`` is the same student taught by that teacher.
"""

from ..gfl_R_18_FPN_shapes_quickstart import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.head.box2box_transform.reg_max = 16
model.head.box2box_transform.bin_width = 1.0

train.output_dir = "./output/gfl_R_18_half_FPN_shapes"
