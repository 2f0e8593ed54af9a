"""
yacs config keys of GFL, for users of detectron2's ``train_net.py``.

The defaults are not restated here: each key takes the default of the
constructor argument it sets (:class:`~gfl_d2.modeling.GFL`,
:class:`~gfl_d2.modeling.GFLHead`, the box transforms, :class:`ATSSMatcher`,
:class:`~gfl_d2.modeling.LocalizationDistiller`), so that the two ways of
configuring a model cannot drift apart.
"""

import inspect
from typing import List

from detectron2.config import CfgNode as CN

from .data.nanodet_augmentations import NanoDetColorJitter, NanoDetWarp
from .ema import WeightEMA
from .modeling import (
    GFL,
    ATSSMatcher,
    DiracBox2BoxTransform,
    DistributionBox2BoxTransform,
    DynamicSoftLabelAssigner,
    GFLHead,
    GhostPAN,
    LocalizationDistiller,
    NanoDetPlus,
    NanoDetPlusHead,
    ShuffleNetV2,
)
from .modeling.res2net import make_res2net_stages
from .modeling.yacs_keys import gfl_yacs_arguments, yacs_key

__all__ = [
    "add_gfl_config",
    "add_recipe_config",
    "use_dataset_folder",
    "constructor_defaults",
    "ema_settings",
    "nanodet_augmentations",
]


def constructor_defaults(cls) -> dict:
    """The arguments of ``cls``'s constructor that have a default, with it."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def add_gfl_config(cfg: CN) -> CN:
    """
    Add ``MODEL.GFL.*`` (defaults = the paper's) to a detectron2 config.
    Call it on ``get_cfg()`` before merging a GFL yaml file.
    """
    cfg.MODEL.GFL = CN()
    _add_model_keys(cfg.MODEL.GFL)
    _add_head_keys(cfg.MODEL.GFL)
    _add_distillation_keys(cfg.MODEL.GFL)
    _add_nanodet_plus_keys(cfg)
    # Res2Net's splits (MODEL.BACKBONE.NAME: build_gfl_res2net_fpn_backbone; depth, norm and
    # deformable stages from MODEL.RESNETS)
    res2net = inspect.signature(make_res2net_stages).parameters
    cfg.MODEL.RES2NET = CN()
    cfg.MODEL.RES2NET.SCALES = res2net["scales"].default
    cfg.MODEL.RES2NET.BASE_WIDTH = res2net["base_width"].default
    # CPU inference of the evaluation: "eager", "frozen", "fused" or "bf16" (gfl_d2.cpu_inference)
    cfg.TEST.CPU_INFERENCE = "eager"
    # Quality Focal Loss for detectron2's RetinaNet (META_ARCHITECTURE: QFLRetinaNet)
    cfg.MODEL.RETINANET.QFL_BETA = 2.0
    # a dataset folder (COCO, Pascal VOC or YOLO layout), used when ROOT is set:
    # registered as DATASETS.TRAIN / DATASETS.TEST, its classes set NUM_CLASSES
    cfg.DATASETS.FOLDER = CN()
    cfg.DATASETS.FOLDER.ROOT = ""
    cfg.DATASETS.FOLDER.LAYOUT = "auto"  # or "coco", "voc", "yolo"
    cfg.DATASETS.FOLDER.TRAIN_SPLIT = "train"
    cfg.DATASETS.FOLDER.TEST_SPLIT = "val"
    add_recipe_config(cfg)
    return cfg


def add_recipe_config(cfg: CN) -> CN:
    """
    Training-recipe keys (NanoDet-Plus's): ``SOLVER.EMA.*``, a weight EMA
    (:class:`gfl_d2.ema.WeightEMA`), and ``INPUT.NANODET.*``, NanoDet's
    augmentations for training (:mod:`gfl_d2.data.nanodet_augmentations`) in place
    of detectron2's resize and flip. Both off by default; the other defaults change
    nothing (the constructors' own).
    """
    ema = constructor_defaults(WeightEMA)
    cfg.SOLVER.EMA = CN()
    cfg.SOLVER.EMA.ENABLED = False
    cfg.SOLVER.EMA.DECAY = ema["decay"]
    cfg.SOLVER.EMA.WARMUP = ema["warmup"]  # iterations of NanoDet's ramp of the decay; 0: none
    warp, color = constructor_defaults(NanoDetWarp), constructor_defaults(NanoDetColorJitter)
    n = cfg.INPUT.NANODET = CN()
    n.ENABLED = False
    n.SIZE = (320, 320)  # (height, width) of every training image, aspect ratio not kept
    n.SCALE = warp["scale"]
    n.STRETCH = warp["stretch"]  # ((x low, x high), (y low, y high))
    n.TRANSLATE = warp["translate"]
    n.FLIP = warp["flip"]
    n.BRIGHTNESS = color["brightness"]
    n.CONTRAST = color["contrast"]
    n.SATURATION = color["saturation"]
    return cfg


def ema_settings(cfg: CN) -> dict:
    """``SOLVER.EMA`` as :func:`gfl_d2.ema.build_weight_ema`'s settings."""
    e = cfg.SOLVER.EMA
    return {"enabled": e.ENABLED, "decay": e.DECAY, "warmup": e.WARMUP}


def nanodet_augmentations(cfg: CN) -> List:
    """``INPUT.NANODET``'s training augmentations: NanoDet's warp, then its colour jitter."""
    n = cfg.INPUT.NANODET
    warp = NanoDetWarp(tuple(n.SIZE), n.SCALE, n.STRETCH, translate=n.TRANSLATE, flip=n.FLIP)
    return [warp, NanoDetColorJitter(n.BRIGHTNESS, n.CONTRAST, n.SATURATION)]


def _add_model_keys(g: CN) -> None:
    """GFL's own arguments (losses, inference, the paper's ablation axes) and ATSS."""
    g.NUM_CLASSES = 80
    g.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    defaults = constructor_defaults(GFL)
    for arg in gfl_yacs_arguments():
        if arg in defaults:
            g[yacs_key(arg)] = defaults[arg]
    # pad images to a multiple of this (0: the backbone's own, 128 with P7)
    g.SIZE_DIVISIBILITY = defaults["size_divisibility"]
    g.ATSS_TOPK = constructor_defaults(ATSSMatcher)["topk"]


def _add_head_keys(g: CN) -> None:
    """The head: towers, its box representation and quality, GFL V2's predictor."""
    head = constructor_defaults(GFLHead)
    g.NUM_CONVS = 4
    g.NORM = head["norm"]
    g.PRIOR_PROB = head["prior_prob"]
    # "distribution" (REG_MAX = n: bins 0..n, BIN_WIDTH = Δ in strides) or "dirac"
    # (one distance per edge, starting at ANCHOR_SCALE / 2 strides)
    g.BOX_REPRESENTATION = "distribution"
    g.REG_MAX = constructor_defaults(DistributionBox2BoxTransform)["reg_max"]
    g.BIN_WIDTH = constructor_defaults(DistributionBox2BoxTransform)["bin_width"]
    g.ANCHOR_SCALE = constructor_defaults(DiracBox2BoxTransform)["anchor_scale"]
    # "joint" | "dgqp" (GFL V2) | "centerness" | "iou" | "none" (gfl_d2.modeling.GFLVariant)
    g.QUALITY = head["quality"]
    for name in ("dgqp_topk", "dgqp_add_mean", "dgqp_channels", "dgqp_init_std"):
        g[name.upper()] = head[name]


def _add_distillation_keys(g: CN) -> None:
    """
    Localization Distillation: a frozen teacher GFL (its config, .py or .yaml,
    and checkpoint; none: no distillation), built by the training entry point.
    """
    g.LD = CN()
    g.LD.TEACHER_CONFIG = ""
    g.LD.TEACHER_WEIGHTS = ""
    g.LD.TEACHER_OPTS = []  # overrides of the teacher's config
    defaults = constructor_defaults(LocalizationDistiller)
    g.LD.LOSS_WEIGHT = defaults["loss_weight"]
    g.LD.TEMPERATURE = defaults["temperature"]


def _add_nanodet_plus_keys(cfg: CN) -> None:
    """
    NanoDet-Plus (``META_ARCHITECTURE: NanoDetPlus``; classes, bins, losses and
    inference from ``MODEL.GFL``): the backbone of ``build_nanodet_plus_backbone``
    (``MODEL.SHUFFLENET_V2``, ``MODEL.GHOST_PAN``), the head, the dynamic
    soft-label assigner and the training-only auxiliary head
    (``MODEL.NANODET_PLUS``). Defaults: the constructors', NanoDet-Plus-m's.
    """
    shufflenet = constructor_defaults(ShuffleNetV2)
    cfg.MODEL.SHUFFLENET_V2 = CN()
    cfg.MODEL.SHUFFLENET_V2.SIZE = shufflenet["size"]  # width: "0.5x", "1.0x", "1.5x", "2.0x"
    cfg.MODEL.SHUFFLENET_V2.OUT_FEATURES = list(shufflenet["out_features"])
    cfg.MODEL.SHUFFLENET_V2.NORM = shufflenet["norm"]
    cfg.MODEL.SHUFFLENET_V2.ACTIVATION = shufflenet["activation"]  # "LeakyReLU" (0.1) or "ReLU"
    pan = constructor_defaults(GhostPAN)
    cfg.MODEL.GHOST_PAN = CN()
    cfg.MODEL.GHOST_PAN.IN_FEATURES = ["stage2", "stage3", "stage4"]
    for name in ("out_channels", "kernel_size", "num_extra_levels", "num_blocks", "norm"):
        cfg.MODEL.GHOST_PAN[name.upper()] = pan[name]
    cfg.MODEL.GHOST_PAN.ACTIVATION = pan["activation"]
    n = cfg.MODEL.NANODET_PLUS = CN()
    head = constructor_defaults(NanoDetPlusHead)
    for name in ("feat_channels", "num_convs", "kernel_size", "norm", "activation"):
        n[name.upper()] = head[name]
    dsl = constructor_defaults(DynamicSoftLabelAssigner)
    n.DSL_TOPK, n.DSL_IOU_FACTOR = dsl["topk"], dsl["iou_factor"]
    # the auxiliary head (NanoDet's SimpleConvHead) on cat(neck, copy of the neck)
    n.AUX_HEAD = True
    n.AUX_FEAT_CHANNELS = 192  # NanoDet-Plus-m's (256 in -1.5x)
    n.AUX_NUM_CONVS = 4
    n.AUX_NORM = "GN"
    n.AUX_ACTIVATION = "LeakyReLU"
    # from this iteration on the aux parts read detached features (NanoDet: detach_epoch)
    n.AUX_DETACH_ITER = constructor_defaults(NanoDetPlus)["aux_detach_iter"]


# the yacs keys that hold a model's number of classes
_NUM_CLASSES_KEYS = (
    ("GFL", "NUM_CLASSES"),
    ("RETINANET", "NUM_CLASSES"),
    ("ROI_HEADS", "NUM_CLASSES"),
)


def use_dataset_folder(cfg: CN) -> CN:
    """
    With ``DATASETS.FOLDER.ROOT`` set (before ``cfg.freeze()``): register its
    train and test splits, make them ``DATASETS.TRAIN`` / ``DATASETS.TEST``,
    and set every ``MODEL.*.NUM_CLASSES`` to the dataset's number of classes.
    """
    folder = cfg.DATASETS.FOLDER
    if not folder.ROOT:
        return cfg
    from .data.folders import dataset_classes, register_dataset

    train = register_dataset(folder.ROOT, folder.TRAIN_SPLIT, folder.LAYOUT)
    test = register_dataset(folder.ROOT, folder.TEST_SPLIT, folder.LAYOUT)
    classes = dataset_classes([train, test])
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TEST = (test,)
    for section, key in _NUM_CLASSES_KEYS:
        if section in cfg.MODEL and key in cfg.MODEL[section]:
            cfg.MODEL[section][key] = len(classes)
    return cfg
