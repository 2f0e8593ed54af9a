"""
Localization Distillation on the embedded shapes dataset: the student of
``gfl_R_18_half_FPN_shapes.py`` (the quick-start architecture with n = 16)
learns, on top of its own losses, the edge distributions of the paper-settings
model ``Synthetic/gfl_R_18_FPN_shapes.py`` (full-width ResNet-18, n = 16)
trained on its default schedule. Train the teacher first:

    python tools/train_net.py --config-file configs/Synthetic/gfl_R_18_FPN_shapes.py
    python tools/train_net.py \
        --config-file configs/Synthetic/Distillation/gfl_R_18_half_FPN_shapes_ld.py

(``distillation.teacher.checkpoint=...`` for a teacher elsewhere). The teacher is
frozen and not saved: the student's checkpoints are a plain GFL's, which
``gfl_R_18_half_FPN_shapes.py`` evaluates.
"""

from detectron2.config import LazyCall as L

from gfl_d2.teacher import build_teacher

from .gfl_R_18_half_FPN_shapes import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

# the teacher and LD's settings: the training entry point builds the teacher and
# wraps the student (model) with it; evaluation and export build the model alone
distillation = dict(
    teacher=L(build_teacher)(
        config_file="Synthetic/gfl_R_18_FPN_shapes.py",
        # where training that config writes
        checkpoint="./output/gfl_R_18_FPN_shapes_n16/model_final.pth",
    ),
    loss_weight=0.25,
    temperature=10.0,
)

train.output_dir = "./output/gfl_R_18_half_FPN_shapes_ld"
