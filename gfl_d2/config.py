"""yacs config keys of GFL, for users of detectron2's ``train_net.py``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_gfl_config", "GFL_ARGUMENT_KEYS", "LD_ARGUMENT_KEYS", "use_dataset_folder"]

# GFL's constructor arguments read straight from MODEL.GFL.<key>
GFL_ARGUMENT_KEYS = {
    "num_classes": "NUM_CLASSES",
    "reg_max": "REG_MAX",
    "bin_width": "BIN_WIDTH",
    "anchor_scale": "ANCHOR_SCALE",
    "qfl_beta": "QFL_BETA",
    "cls_loss": "CLS_LOSS",
    "quality": "QUALITY",
    "box_representation": "BOX_REPRESENTATION",
    "box_loss_weighting": "BOX_LOSS_WEIGHTING",
    "focal_loss_alpha": "FOCAL_LOSS_ALPHA",
    "focal_loss_gamma": "FOCAL_LOSS_GAMMA",
    "loss_cls_weight": "LOSS_CLS_WEIGHT",
    "loss_bbox_weight": "LOSS_BBOX_WEIGHT",
    "loss_dfl_weight": "LOSS_DFL_WEIGHT",
    "loss_quality_weight": "LOSS_QUALITY_WEIGHT",
    "test_score_thresh": "SCORE_THRESH_TEST",
    "test_topk_candidates": "TOPK_CANDIDATES_TEST",
    "test_nms_thresh": "NMS_THRESH_TEST",
    "output_box_distributions": "OUTPUT_BOX_DISTRIBUTIONS",
}
# Localization Distillation's constructor arguments, from MODEL.GFL.LD.<key>
LD_ARGUMENT_KEYS = {"loss_ld_weight": "LOSS_WEIGHT", "ld_temperature": "TEMPERATURE"}


def add_gfl_config(cfg: CN) -> CN:
    """
    Add ``MODEL.GFL.*`` (defaults = the paper's) to a detectron2 config.
    Call it on ``get_cfg()`` before merging a GFL yaml file.
    """
    cfg.MODEL.GFL = CN()
    _add_model_keys(cfg.MODEL.GFL)
    _add_loss_and_inference_keys(cfg.MODEL.GFL)
    # Quality Focal Loss for detectron2's RetinaNet (META_ARCHITECTURE: QFLRetinaNet)
    cfg.MODEL.RETINANET.QFL_BETA = 2.0
    # a dataset folder (COCO, Pascal VOC or YOLO layout), used when ROOT is set:
    # registered as DATASETS.TRAIN / DATASETS.TEST, its classes set NUM_CLASSES
    cfg.DATASETS.FOLDER = CN()
    cfg.DATASETS.FOLDER.ROOT = ""
    cfg.DATASETS.FOLDER.LAYOUT = "auto"  # or "coco", "voc", "yolo"
    cfg.DATASETS.FOLDER.TRAIN_SPLIT = "train"
    cfg.DATASETS.FOLDER.TEST_SPLIT = "val"
    return cfg


def _add_model_keys(g: CN) -> None:
    """The architecture, assignment and the paper's ablation axes (the head reads REG_MAX, QUALITY, ...)."""
    g.NUM_CLASSES = 80
    g.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # head
    g.NUM_CONVS = 4
    g.NORM = "GN"
    g.PRIOR_PROB = 0.01
    # general distribution: n (bins 0..n; the head predicts 4 * (n + 1) logits) and bin width Δ in units of stride
    g.REG_MAX = 16
    g.BIN_WIDTH = 1.0
    # anchor side / stride (must agree with MODEL.ANCHOR_GENERATOR.SIZES)
    g.ANCHOR_SCALE = 8.0
    # ATSS
    g.ATSS_TOPK = 9
    # the paper's ablation axes (see gfl_d2.modeling.GFL): classification loss
    # "qfl" | "focal"; quality "joint" | "dgqp" (GFL V2) | "centerness" | "iou" | "none"; box
    # representation "distribution" | "dirac"; box loss weights "auto" |
    # "score" | "centerness" | "none"
    g.CLS_LOSS = "auto"  # follows QUALITY: "qfl" for "joint" / "dgqp", else "focal"
    g.QUALITY = "joint"
    g.BOX_REPRESENTATION = "distribution"
    g.BOX_LOSS_WEIGHTING = "auto"
    # GFL V2's distribution-guided quality predictor (QUALITY "dgqp"): top-k
    # probabilities per edge, their mean, hidden width
    g.DGQP_TOPK = 4
    g.DGQP_ADD_MEAN = True
    g.DGQP_CHANNELS = 64
    g.DGQP_INIT_STD = 0.01


def _add_loss_and_inference_keys(g: CN) -> None:
    """The losses' parameters and weights, and inference's filtering and outputs."""
    g.QFL_BETA = 2.0
    g.FOCAL_LOSS_ALPHA = 0.25
    g.FOCAL_LOSS_GAMMA = 2.0
    g.LOSS_CLS_WEIGHT = 1.0  # QFL, or Focal Loss with CLS_LOSS "focal"
    g.LOSS_BBOX_WEIGHT = 2.0
    g.LOSS_DFL_WEIGHT = 0.25  # 0 turns DFL off
    g.LOSS_QUALITY_WEIGHT = 1.0  # the separate centerness / IoU branch
    # inference
    g.SCORE_THRESH_TEST = 0.05
    g.TOPK_CANDIDATES_TEST = 1000
    g.NMS_THRESH_TEST = 0.6
    # add pred_box_dists / pred_box_std (per-edge uncertainty) to the outputs
    g.OUTPUT_BOX_DISTRIBUTIONS = True
    # pad images to a multiple of this (0: the backbone's own, 128 with P7)
    g.SIZE_DIVISIBILITY = 32
    # CPU inference: "eager", or "frozen" (backbone and head through a frozen trace for oneDNN)
    g.CPU_INFERENCE = "eager"
    # Localization Distillation: a frozen teacher GFL (its config, .py or .yaml, and
    # checkpoint; none: no distillation) whose edge distributions the model learns
    g.LD = CN()
    g.LD.TEACHER_CONFIG = ""
    g.LD.TEACHER_WEIGHTS = ""
    g.LD.TEACHER_OPTS = []  # overrides of the teacher's config
    g.LD.LOSS_WEIGHT = 0.25
    g.LD.TEMPERATURE = 10.0


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
