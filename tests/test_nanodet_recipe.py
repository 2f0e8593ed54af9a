"""
NanoDet-Plus's training recipe: the LazyConfigs carry it (weight EMA,
augmentations, batch 96 for 300 epochs, AdamW, warm-up, cosine, clipping),
and the yacs keys (SOLVER.EMA, INPUT.NANODET) train a tiny GFL with
projects/GFL/train_net.py's Trainer: two iterations on NanoDet's augmented
images, the evaluation on the EMA, the checkpoint holding both, --eval-only
with the EMA.
"""

import importlib.util
import os

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import default_argument_parser, hooks
from detectron2.utils.events import EventStorage

from gfl_d2 import add_gfl_config
from gfl_d2.data import CATEGORIES, ShapesConfig, register_shapes, write_split
from gfl_d2.data.nanodet_augmentations import NanoDetColorJitter, NanoDetWarp
from gfl_d2.ema import EMA_KEY, WeightEMA
from gfl_d2.model_zoo import get_config_file

from .repo import ROOT

NANODET_CONFIGS = ["nanodet_plus_m_320", "nanodet_plus_m_416", "nanodet_plus_m_1_5x_320"]


@pytest.mark.parametrize("name", NANODET_CONFIGS + ["nanodet_plus_m_1_5x_416"])
def test_the_nanodet_configs_carry_nanodets_recipe(name):
    cfg = LazyConfig.load(get_config_file(f"COCO-Detection/NanoDet/{name}.py"))
    size = 416 if name.endswith("416") else 320
    warp, colour = instantiate(cfg.dataloader.train.mapper.augmentations)
    assert isinstance(warp, NanoDetWarp) and isinstance(colour, NanoDetColorJitter)
    assert warp.output_size == (size, size) and warp.scale == (0.6, 1.4)
    assert warp.stretch == ((0.8, 1.2), (0.8, 1.2)) and warp.translate == 0.2 and warp.flip == 0.5
    assert colour.brightness == 0.2 and colour.contrast == (0.6, 1.4)
    assert colour.saturation == (0.5, 1.2)
    assert dict(cfg.train.ema) == {"enabled": True, "decay": 0.9998, "warmup": 2000}
    assert cfg.dataloader.train.total_batch_size == 96
    assert cfg.train.max_iter == 300 * 117266 // 96
    assert cfg.optimizer.lr == 0.001 and cfg.optimizer.weight_decay == 0.05
    assert cfg.train.clip_grad.clip_value == 35.0


def _train_net():
    """projects/GFL/train_net.py as a module."""
    path = os.path.join(ROOT, "projects", "GFL", "train_net.py")
    spec = importlib.util.spec_from_file_location("gfl_project_train_net", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_yacs_config(tmp_path):
    """A ResNet-18 GFL at 64x64 on four shapes images, with the recipe keys on."""
    root = str(tmp_path / "shapes")
    shapes = ShapesConfig(image_size=80, max_objects=4)
    write_split(root, "train", 4, seed=0, cfg=shapes, progress=False)
    prefix = f"recipe{abs(hash(str(tmp_path)))}"
    train, _ = register_shapes(root, prefix=prefix, splits=("train", "train"))
    cfg = add_gfl_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-GFL.yaml"))
    cfg.merge_from_list(
        ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18"]
        + ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32"]
        + ["MODEL.GFL.NUM_CONVS", "1", "MODEL.GFL.NUM_CLASSES", str(len(CATEGORIES))]
        + ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{train}',)"]
        + ["INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2"]
        + ["SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "DATALOADER.NUM_WORKERS", "0"]
        + ["TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path / "out")]
        + ["SOLVER.EMA.ENABLED", "True", "SOLVER.EMA.DECAY", "0.9", "SOLVER.EMA.WARMUP", "2.0"]
        + ["INPUT.NANODET.ENABLED", "True", "INPUT.NANODET.SIZE", "(64, 64)"]
        + ["INPUT.NANODET.SCALE", "(0.6, 1.4)", "INPUT.NANODET.STRETCH", "((0.8, 1.2), (0.8, 1.2))"]
        + ["INPUT.NANODET.TRANSLATE", "0.2", "INPUT.NANODET.FLIP", "0.5"]
        + ["INPUT.NANODET.BRIGHTNESS", "0.2", "INPUT.NANODET.CONTRAST", "(0.6, 1.4)"]
        + ["INPUT.NANODET.SATURATION", "(0.5, 1.2)"]
    )
    return cfg


def test_the_recipe_keys_are_off_by_default():
    cfg = add_gfl_config(get_cfg())
    assert not cfg.SOLVER.EMA.ENABLED and not cfg.INPUT.NANODET.ENABLED
    assert cfg.SOLVER.EMA.DECAY == 0.9998 and cfg.SOLVER.EMA.WARMUP == 2000.0


def test_yacs_trainer_trains_with_the_ema_and_nanodets_augmentations(tmp_path, monkeypatch):
    net = _train_net()
    cfg = tiny_yacs_config(tmp_path)
    with EventStorage():  # the ground-truth check counts what it drops
        batch = next(iter(net.Trainer.build_train_loader(cfg)))
    assert all(x["image"].shape == (3, 64, 64) for x in batch)
    assert all(x["image"].dtype == torch.float32 for x in batch)  # after the colour jitter
    evaluated = []
    monkeypatch.setattr(net.Trainer, "test", classmethod(lambda c, cfg, m: evaluated.append(m)))
    trainer = net.Trainer(cfg)
    assert isinstance(trainer.ema, WeightEMA)
    kinds = [type(h) for h in trainer._hooks]
    # the average is updated after the schedule and before the checkpoints and the evaluation
    at = kinds.index(WeightEMA)
    assert kinds[at - 1] is hooks.LRScheduler and hooks.PeriodicCheckpointer in kinds[at + 1 :]
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert evaluated == [trainer.ema.model] and trainer.ema.updates() == 3
    final = tmp_path / "out" / "model_final.pth"
    saved = torch.load(final, weights_only=False)
    assert set(saved) >= {"model", EMA_KEY}
    # --eval-only: the checkpoint's average
    args = default_argument_parser().parse_args(["--eval-only"])
    (tmp_path / "cfg.yaml").write_text(cfg.dump())
    args.config_file, args.opts = str(tmp_path / "cfg.yaml"), ["MODEL.WEIGHTS", str(final)]
    evaluated.clear()
    net.main(args)
    (model,) = evaluated
    for k, v in trainer.ema.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    trained = trainer.model.state_dict()
    assert any(not torch.equal(model.state_dict()[k], trained[k]) for k in trained)
    assert np.isfinite([v.float().sum().item() for v in model.state_dict().values()]).all()
