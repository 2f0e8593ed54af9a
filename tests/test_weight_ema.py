"""
Weight EMA (gfl_d2.ema): the average equals one computed by hand over three
steps (parameters and BatchNorm buffers), under both trainers and DDP; the
checkpoints hold it next to the trained weights, resuming restores both, the
evaluation and the weights policy take it; NanoDet's own ExpMovingAverager
gives the same average (with NANODET_SRC).
"""

import importlib.util
import io
import logging
import math
import os

import pytest
import torch
from detectron2.engine import HookBase

from gfl_d2.checkpoint import CheckedCheckpointer, load_trained_weights
from gfl_d2.devices import unwrap
from gfl_d2.ema import EMA_KEY, WeightEMA, averaged_weights, build_weight_ema, ema_retention
from gfl_d2.train_loop import AMPTrainer, SimpleTrainer
from gfl_studies.nanodet_runtime import nanodet_available, nanodet_source


class Toy(torch.nn.Module):
    """A linear layer, BatchNorm (running statistics and a count) and another linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
        )

    def forward(self, batch):
        return {"loss": ((self.net(batch) - 1.0) ** 2).mean()}


def batches(seed=1):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield 3.0 * torch.randn(8, 4, generator=g) + 1.0


class Record(HookBase):
    """The model's state before training and after every step."""

    def __init__(self, model):
        self.model, self.states = model, []

    def _take(self):
        self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})

    def before_train(self):
        self._take()

    def after_step(self):
        self._take()


def train(model, steps, ema=None, trainer_class=SimpleTrainer, start=0, **kwargs):
    """``steps`` SGD steps (lr 0.5: large moves, so that the average lags visibly)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = trainer_class(model, batches(), optimizer, **kwargs)
    record = Record(unwrap(model))
    trainer.register_hooks([ema, record])
    trainer.train(start, start + steps)
    return record.states


def by_hand(states, decay, warmup, first=1):
    """The EMA of ``states`` (float64; integer buffers: the model's own, not averaged)."""
    ema = {k: v.double() for k, v in states[0].items()}
    for step, state in enumerate(states[1:], start=first):
        keep = decay * (1.0 - math.exp(-(step + 1) / warmup))
        for k, v in state.items():
            mixed = keep * ema[k] + (1.0 - keep) * v.double()
            ema[k] = mixed if v.is_floating_point() else v.double()
    return ema


def assert_state_close(got, want, atol=1e-6):
    """Floats to float32 rounding of values ~1; integer buffers exactly."""
    assert set(got) == set(want)
    for k, v in got.items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), want[k], rtol=0, atol=atol, msg=k)
        else:
            assert v.item() == want[k].item(), k


def test_the_average_equals_one_computed_by_hand_over_three_steps():
    model = Toy()
    ema = WeightEMA(model, decay=0.9, warmup=2.0)
    states = train(model, 3, ema)
    want = by_hand(states, 0.9, 2.0)
    assert_state_close(ema.model.state_dict(), want)
    # the float buffers are averaged too (BatchNorm's statistics; its count is the model's),
    # and the average lags the model by far more than the tolerance
    assert "net.1.running_mean" in want and "net.1.num_batches_tracked" in want
    for k in ("net.0.weight", "net.1.running_var"):
        assert (ema.model.state_dict()[k] - states[-1][k]).abs().max() > 1e-2, k
    assert ema.updates() == 4  # the copy and three updates


def test_integer_buffers_are_the_models_not_averaged():
    """
    NanoDet-Plus's ShuffleNetV2 gathers channels by a constant index buffer: an
    average computed in float and truncated (torch's EMA of an integer tensor)
    turned index 5 into 4 and the averaged model into one that detects nothing.
    Late in NanoDet's ramp (retention about 0.55), the averaged model of an
    unchanged model must compute what the model computes.
    """
    from detectron2.config import LazyConfig, instantiate

    from .repo import ROOT

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "Synthetic", "nanodet_plus_m_shapes.py"))
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    ema = WeightEMA(model, decay=0.9998, warmup=2000)
    ema.update()  # the copy
    ema.averaged.n_averaged.fill_(1600)
    for _ in range(3):
        ema.update()
    order = "backbone.bottom_up.stage2.1.shuffle_order"
    assert torch.equal(dict(ema.model.named_buffers())[order], dict(model.named_buffers())[order])
    image = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        features = model.backbone(model.preprocess_image([{"image": image}]).tensor)
        averaged = ema.model.eval().backbone(ema.model.preprocess_image([{"image": image}]).tensor)
    for name, value in features.items():
        # the same weights; the average of equal floats moves them by float32 rounding only
        torch.testing.assert_close(averaged[name], value, rtol=1e-4, atol=1e-4, msg=name)


def test_nanodets_ramp_of_the_decay():
    for step in (1, 2, 500, 2000, 10**6):
        # NanoDet's calculate_dacay: the model's share decay·exp(−(1 + step)/2000) + 1 − decay
        model_share = 0.9998 * math.exp(-(1 + step) / 2000) + 1 - 0.9998
        assert abs(ema_retention(step, 0.9998, 2000) - (1 - model_share)) < 1e-15
    assert ema_retention(1, 0.9998, 0) == 0.9998
    assert build_weight_ema({"enabled": False}, Toy()) is None
    assert build_weight_ema(None, Toy()) is None
    with pytest.raises(ValueError, match="unknown weight EMA settings"):
        build_weight_ema({"enabled": True, "momentum": 0.9}, Toy())


def test_the_amp_trainer_updates_the_average_after_its_step(monkeypatch):
    """AMPTrainer's step (its GradScaler steps the optimizer) on the CPU: same average."""
    if not torch.cuda.is_available():  # detectron2's AMPTrainer asserts CUDA; the step runs here
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = Toy()
    ema = WeightEMA(model, decay=0.9, warmup=2.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    states = train(model, 3, ema, AMPTrainer, grad_scaler=scaler)
    assert_state_close(ema.model.state_dict(), by_hand(states, 0.9, 2.0))
    assert not torch.equal(states[0]["net.0.weight"], states[-1]["net.0.weight"])


def test_a_ddp_model_is_averaged_unwrapped(tmp_path):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(Toy())
        ema = WeightEMA(wrapped, decay=0.9, warmup=2.0)
        states = train(wrapped, 3, ema)
        assert all(not k.startswith("module.") for k in ema.model.state_dict())
        assert_state_close(ema.model.state_dict(), by_hand(states, 0.9, 2.0))
    finally:
        torch.distributed.destroy_process_group()
    # what a checkpoint holds loads into the plain model
    plain = Toy()
    plain.load_state_dict(averaged_weights(ema.averaged.state_dict()))


def test_checkpoints_hold_both_and_resuming_restores_both(tmp_path):
    model = Toy()
    ema = WeightEMA(model, decay=0.9, warmup=2.0)
    states = train(model, 2, ema)
    CheckedCheckpointer(model, str(tmp_path), **{EMA_KEY: ema.averaged}).save("model_0000001")
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)
    assert set(saved) >= {"model", EMA_KEY}
    assert_state_close(saved["model"], {k: v.double() for k, v in states[-1].items()})

    # resume: the trained weights into the model, the average and its count into the EMA
    resumed = Toy()
    resumed_ema = WeightEMA(resumed, decay=0.9, warmup=2.0)
    checkpointer = CheckedCheckpointer(resumed, str(tmp_path), **{EMA_KEY: resumed_ema.averaged})
    checkpointer.resume_or_load("", resume=True)
    assert_state_close(resumed.state_dict(), {k: v.double() for k, v in states[-1].items()})
    assert_state_close(resumed_ema.model.state_dict(), by_hand(states, 0.9, 2.0))
    assert resumed_ema.updates() == 3
    # one more step continues the ramp where it was (step 3), as an unbroken run
    more = train(resumed, 1, resumed_ema, start=2)
    assert_state_close(resumed_ema.model.state_dict(), by_hand(states + more[1:], 0.9, 2.0))


@pytest.fixture
def checkpoint_log():
    """gfl_d2.checkpoint's messages (the entry points may set gfl_d2's loggers not to propagate)."""
    stream = io.StringIO()
    handler, logger = logging.StreamHandler(stream), logging.getLogger("gfl_d2.checkpoint")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture
def fresh_shapes_registration():
    """shapes_train/val registered by this test alone (another test may have registered them)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    def drop():
        for name in ("shapes_train", "shapes_val"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)

    drop()
    yield
    drop()


def test_the_weights_policy_takes_the_average_and_says_so(tmp_path, checkpoint_log):
    model = Toy()
    ema = WeightEMA(model, decay=0.9, warmup=2.0)
    train(model, 2, ema)
    CheckedCheckpointer(model, str(tmp_path), **{EMA_KEY: ema.averaged}).save("final")
    CheckedCheckpointer(model, str(tmp_path)).save("plain")
    fresh = Toy()
    CheckedCheckpointer(fresh, use_ema=True).load(str(tmp_path / "final.pth"))
    assert "Loading the weight EMA ('ema') of" in checkpoint_log.getvalue()
    for k, v in ema.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    checkpoint_log.seek(0)
    checkpoint_log.truncate()
    CheckedCheckpointer(fresh, use_ema=True).load(str(tmp_path / "plain.pth"))
    assert "Loading the trained weights ('model')" in checkpoint_log.getvalue()
    assert "holds no weight EMA" in checkpoint_log.getvalue()
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_lazy_training_evaluates_and_saves_the_average(
    tmp_path, monkeypatch, fresh_shapes_registration
):
    """tools/train_net.py's do_train with train.ema: the evaluation runs the EMA's model."""
    from detectron2.config import LazyConfig

    from gfl_d2 import training
    from gfl_d2.lazy_config import prepare_datasets, resolve_num_classes
    from gfl_d2.model_zoo import DEFAULT_CONFIG

    from .repo import TINY_OVERRIDES

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    overrides = [*TINY_OVERRIDES, "train.max_iter=2", "train.eval_period=0", "train.check_bins=0"]
    overrides += [f"train.output_dir={tmp_path / 'out'}", "train.device=cpu"]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(DEFAULT_CONFIG), overrides)
    cfg.train.ema = dict(enabled=True, decay=0.9, warmup=2.0)
    prepare_datasets(cfg)
    resolve_num_classes(cfg)
    evaluated = []
    monkeypatch.setattr(training, "do_test", lambda cfg, model: evaluated.append(model) or {})
    built, build = [], training.build_weight_ema
    monkeypatch.setattr(
        training, "build_weight_ema", lambda *a: built.append(build(*a)) or built[-1]
    )
    training.do_train(cfg)
    (ema,) = built
    assert evaluated == [ema.model]  # the final evaluation
    saved = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)
    assert set(saved) >= {"model", EMA_KEY} and int(saved[EMA_KEY]["n_averaged"]) == 3
    # --eval-only's weights: the average
    fresh = training.instantiate(cfg.model)
    load_trained_weights(fresh, str(tmp_path / "out" / "model_final.pth"))
    for k, v in ema.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def _nanodet_ema_module():
    path = os.path.join(nanodet_source(), "nanodet", "model", "weight_averager", "ema.py")
    spec = importlib.util.spec_from_file_location("nanodet_ema", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # torch only: no NanoDet package import
    return module


@pytest.mark.skipif(not nanodet_available(), reason="NANODET_SRC (NanoDet's source) is not set")
@pytest.mark.parametrize("first", [1, 1001])
def test_nanodets_own_ema_gives_the_same_average(first):
    """
    NanoDet's ExpMovingAverager (decay 0.9998, its ramp), updated at Lightning's
    global_step (the steps done) after each step, against WeightEMA; from the first
    step, and from step 1001 (where the ramp keeps ~40%).
    """
    model = Toy()
    ours = WeightEMA(model, decay=0.9998, warmup=2000)
    theirs = _nanodet_ema_module().ExpMovingAverager(0.9998)
    theirs.load_from(model)
    ours.update()  # the copy
    ours.averaged.n_averaged.fill_(first)

    class NanoDets(HookBase):
        def after_step(self):
            theirs.update(model, first + self.trainer.iter)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = SimpleTrainer(model, batches(), optimizer)
    trainer.register_hooks([ours, NanoDets()])
    trainer.train(0, 3)
    got = ours.model.state_dict()
    assert set(got) == set(theirs.state)
    for k, v in theirs.state.items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)
        else:  # NanoDet averages BatchNorm's step count too (truncated); here it is the model's
            assert torch.equal(got[k], model.state_dict()[k]), k
    moved = (got["net.0.weight"] - model.state_dict()["net.0.weight"]).abs().max()
    assert moved > 1e-4  # the average is not the model itself
