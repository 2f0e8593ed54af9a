"""Every config under configs/ loads and builds the model it describes."""

import glob
import os
import re

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from omegaconf import OmegaConf

from gfl_d2 import GFL, add_gfl_config
from gfl_d2.model_zoo import get_config_file
from gfl_d2.modeling import DistributionBox2BoxTransform, LocalizationDistiller
from gfl_d2.teacher import distill_from_lazy_config

from .repo import ROOT

LAZY = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
LAZY = [p for p in LAZY if os.sep + "common" + os.sep not in p]
YAML = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_configs_are_found():
    names = {os.path.relpath(p, os.path.join(ROOT, "configs")) for p in LAZY + YAML}
    for expected in [
        "COCO-Detection/gfl_R_50_FPN_1x.py",
        "COCO-Detection/gfl_R_50_FPN_ms2x.py",
        "COCO-Detection/gfl_R_101_FPN_ms2x.py",
        "COCO-Detection/gfl_X_101_32x4d_FPN_ms2x.py",
        "Base-GFL.yaml",
        "gfl_R_50_FPN_1x.yaml",
    ]:
        assert expected in names


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    """A small YOLO folder for the configs that train on one (configs/OwnData)."""
    from gfl_d2.data import write_layout
    from gfl_studies.bars import BARS_CLASSES, BarsConfig, generate_bars_split

    root = tmp_path_factory.mktemp("folder")
    small = BarsConfig(min_width=64, max_width=96, min_height=48, max_height=80, max_objects=3)
    for split, seed in (("train", 0), ("val", 1)):
        write_layout(
            "yolo",
            str(root),
            split,
            generate_bars_split(str(root / "r" / split), split, 3, seed, small),
            BARS_CLASSES,
        )
    return root


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """
    A checkpoint of a distillation config's teacher (its config's initial weights), one per
    teacher config.
    """
    made = {}

    def make(config_file):
        if config_file not in made:
            cfg = LazyConfig.load(get_config_file(config_file))
            path = tmp_path_factory.mktemp("teacher") / "model.pth"
            torch.save({"model": instantiate(cfg.model).state_dict()}, path)
            made[config_file] = str(path)
        return made[config_file]

    return make


@pytest.mark.parametrize("path", LAZY, ids=lambda p: os.path.relpath(p, ROOT))
def test_lazy_config_instantiates(path, dataset_folder, teacher_checkpoint):
    cfg = LazyConfig.load(path)
    distillation = cfg.get("distillation")
    if distillation is not None:  # Localization Distillation: the teacher's weights
        teacher = distillation.teacher
        teacher.checkpoint = teacher_checkpoint(teacher.config_file)
    if "dataset" in cfg:  # a dataset folder's config: its mandatory values
        cfg.dataset.root = str(dataset_folder)
        if OmegaConf.is_missing(cfg.train, "init_checkpoint"):
            cfg.train.init_checkpoint = ""
        assert instantiate(cfg.model.num_classes) == 4  # from the folder's class names
    for key in ("model", "dataloader", "optimizer", "lr_multiplier", "train"):
        assert key in cfg, key
    model = instantiate(cfg.model)
    # GFL, or detectron2's RetinaNet / FCOS (with QFL) for the baselines
    assert isinstance(model, GFL if os.path.basename(path).startswith("gfl") else DenseDetector)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 96, 128) * 255}])
    assert {"pred_boxes", "scores", "pred_classes"} <= set(out["instances"].get_fields())
    # the optimizer and schedule build too
    cfg.optimizer.params.model = model
    instantiate(cfg.optimizer)
    instantiate(cfg.lr_multiplier)
    # a distillation config: the student wrapped with its teacher (what training runs)
    distiller = distill_from_lazy_config(cfg, model)
    assert (distiller is None) == (distillation is None)
    if distiller is not None:
        assert isinstance(distiller, LocalizationDistiller) and distiller.student is model
        assert distiller.loss_weight == distillation.loss_weight


def test_coco_configs_match_the_release():
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", "gfl_R_50_FPN_1x.py"))
    m = cfg.model
    assert m.num_classes == 80 and m.anchor_matcher.topk == 9
    assert instantiate(m.head.box2box_transform) == DistributionBox2BoxTransform(16, 1.0)
    assert m.head.quality == "joint" and list(m.anchor_generator.strides) == [8, 16, 32, 64, 128]
    assert m.backbone.bottom_up.stages.stride_in_1x1 is False
    assert m.backbone.bottom_up.stages.norm == "FrozenBN"
    assert m.backbone.top_block.in_feature == "p5"
    assert list(m.pixel_mean) == [123.675, 116.28, 103.53] and m.input_format == "RGB"
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert m.size_divisibility == 32
    assert cfg.optimizer.lr == 0.01 and cfg.train.max_iter == 90000
    assert abs(cfg.lr_multiplier.warmup_length * 90000 - 500) < 1e-6
    ms = LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", "gfl_R_50_FPN_ms2x.py"))
    assert ms.train.max_iter == 180000
    assert tuple(ms.dataloader.train.mapper.augmentations[0].short_edge_length) == (480, 960)


def test_release_architecture_details():
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", "gfl_R_50_FPN_1x.py"))
    model = instantiate(cfg.model)
    block = model.backbone.bottom_up.res3[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # stride on the 3x3
    x = torch.randn(1, 256, 4, 4)
    top = model.backbone.top_block
    p6 = top.p6(x)
    torch.testing.assert_close(top(x)[1], top.p7(p6))  # no ReLU before P7
    images = model.preprocess_image([{"image": torch.zeros(3, 100, 100)}])
    assert images.tensor.shape[-2:] == (128, 128)  # padded to a multiple of 32


def test_yacs_config_builds_the_same_model_as_lazy():
    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "gfl_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    yacs_model = build_model(cfg)
    lazy_model = instantiate(
        LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", "gfl_R_50_FPN_1x.py")).model
    )
    assert isinstance(yacs_model, GFL)
    a = {k: v.shape for k, v in yacs_model.state_dict().items()}
    b = {k: v.shape for k, v in lazy_model.state_dict().items()}
    assert a == b
    assert yacs_model.size_divisibility == lazy_model.size_divisibility == 32
    assert yacs_model.box2box_transform == lazy_model.box2box_transform
    assert yacs_model.variant == lazy_model.variant
    assert list(yacs_model.anchor_generator.strides) == list(lazy_model.anchor_generator.strides)
    assert yacs_model.test_nms_thresh == 0.6 and yacs_model.max_detections_per_image == 100


def test_yacs_box_keys_set_the_heads_transform():
    cfg = add_gfl_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "gfl_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18"])
    cfg.merge_from_list(["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    cfg.merge_from_list(["MODEL.GFL.REG_MAX", "8", "MODEL.GFL.BIN_WIDTH", "0.5"])
    model = build_model(cfg)
    assert model.head.box2box_transform == DistributionBox2BoxTransform(8, 0.5)
    assert model.box2box_transform is model.head.box2box_transform
    assert model.head.bbox_pred.out_channels == 36
    assert cfg.TEST.CPU_INFERENCE == "eager" and "CPU_INFERENCE" not in cfg.MODEL.GFL


@pytest.mark.parametrize(
    "name", ["gflv2_R_50_FPN_1x", "gflv2_R_50_FPN_ms2x", "gflv2_R_101_FPN_ms2x"]
)
def test_yacs_and_lazy_v2_configs_build_the_same_model(name):
    cfg = add_gfl_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", f"{name}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    yacs_model = build_model(cfg)
    lazy = LazyConfig.load(os.path.join(ROOT, "configs", "COCO-Detection", f"{name}.py"))
    lazy_model = instantiate(lazy.model)
    for m in (yacs_model, lazy_model):
        assert isinstance(m, GFL) and m.variant.quality == "dgqp" and m.head.has_quality_predictor
    assert {k: v.shape for k, v in yacs_model.state_dict().items()} == {
        k: v.shape for k, v in lazy_model.state_dict().items()
    }
    assert (
        yacs_model.head.dgqp.layers[0].in_channels == 20
        and yacs_model.head.dgqp.layers[0].out_channels == 64
    )
    if "ms2x" in name:
        assert (
            cfg.INPUT.MIN_SIZE_TRAIN == (480, 960) and cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range"
        )
        assert cfg.SOLVER.MAX_ITER == lazy.train.max_iter == 180000


def test_every_model_zoo_row_and_converter_target_names_an_existing_config():
    from gfl_d2.convert import _CONFIGS

    named = set(_CONFIGS.values())
    for doc in ("README.md", os.path.join("projects", "GFL", "README.md")):
        with open(os.path.join(ROOT, doc)) as f:
            named |= set(re.findall(r"`(COCO-Detection/[\w/.-]+\.py)`", f.read()))
    assert len(named) >= 16  # the 16 released rows that convert, and more
    missing = [c for c in named if not os.path.isfile(os.path.join(ROOT, "configs", c))]
    assert not missing
