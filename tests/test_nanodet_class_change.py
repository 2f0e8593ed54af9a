"""
NanoDet-Plus fine-tuned on another number of classes, from NanoDet's own
checkpoint layout converted by the tool: the head's output convolutions hold
the class logits and the edge distributions in one layer, so a class change
loads their box rows and keeps the model's initialisation for the class rows;
the auxiliary head, kept by the converter, loads but for its class layer; the
bin check counts the kept box rows as the trained box layer; a checkpoint of
another n is not fitted; and the fine-tuning config trains from the command line.
"""

import logging

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from gfl_d2.checkpoint import CheckedCheckpointer, box_layer, holds_layer
from gfl_d2.convert import convert_checkpoint

from .repo import ROOT, run_tool
from .test_nanodet_layout import nanodet_state_dict

CONFIG = f"{ROOT}/configs/COCO-Detection/NanoDet/nanodet_plus_m_320.py"
BOX_ROWS = 4 * 8  # n = 7


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """NanoDet-Plus-m's .pth layout (80 classes, random weights, aux parts included), converted."""
    base = tmp_path_factory.mktemp("nanodet_coco")
    src, dst = base / "nanodet-plus-m_320.pth", base / "converted.pth"
    torch.save({"state_dict": nanodet_state_dict("m 320")}, src)
    convert_checkpoint(str(src), str(dst))
    return dst


def _model(num_classes, **overrides):
    cfg = LazyConfig.load(CONFIG)
    cfg.model.num_classes = num_classes
    for key, value in overrides.items():
        LazyConfig.apply_overrides(cfg, [f"{key}={value}"])
    torch.manual_seed(0)
    return instantiate(cfg.model)


def _load(model, path, caplog):
    with caplog.at_level(logging.WARNING, logger="gfl_d2.checkpoint"):
        checkpointer = CheckedCheckpointer(model)
        checkpointer.load(str(path), checkpointables=[])
    return checkpointer


def test_converter_keeps_the_auxiliary_parts_and_the_class_count(converted):
    saved = torch.load(converted, weights_only=True)
    assert saved["num_classes"] == 80
    model = _model(80)
    incompatible = CheckedCheckpointer(model)._load_model(dict(saved))
    assert not (incompatible.missing_keys or incompatible.incorrect_shapes)
    source = nanodet_state_dict("m 320")
    state = model.state_dict()
    assert torch.equal(state["aux_head.bbox_pred.weight"], source["aux_head.gfl_reg.weight"])
    assert torch.equal(state["aux_neck.reduce.0.weight"],
                       source["aux_fpn.reduce_layers.0.conv.weight"])  # fmt: skip


def test_a_model_without_auxiliary_parts_loads_the_converted_file_strictly(converted):
    """Inference, export: the model built with aux_head=None leaves the aux tensors out."""
    cfg = LazyConfig.load(CONFIG)
    cfg.model.aux_head = None
    model = instantiate(cfg.model)
    state = torch.load(converted, weights_only=True)["model"]
    assert any(k.startswith("aux_head.") for k in state)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.state_dict()["head.outputs.1.weight"], state["head.outputs.1.weight"])


@pytest.mark.parametrize("recorded", [True, False], ids=["class count recorded", "inferred"])
def test_class_change_keeps_the_box_rows_of_the_shared_layer(converted, tmp_path, caplog, recorded):
    path = converted
    if not recorded:  # a checkpoint that does not say its class count: rows less 4 (n + 1)
        saved = torch.load(converted, weights_only=True)
        del saved["num_classes"]
        path = tmp_path / "no_count.pth"
        torch.save(saved, path)
    start = torch.load(converted, weights_only=True)["model"]
    model = _model(5)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = _load(model, path, caplog)
    state = model.state_dict()
    for i in range(4):
        for part in ("weight", "bias"):
            key = f"head.outputs.{i}.{part}"
            assert state[key].shape[0] == 5 + BOX_ROWS
            assert torch.equal(state[key][5:], start[key][80:])  # the trained box rows
            assert torch.equal(state[key][:5], fresh[key][:5])  # the model's own class rows
    # the prior: every class row's bias at -log(99)
    assert torch.allclose(state["head.outputs.0.bias"][:5], torch.full((5,), -4.59512), atol=1e-5)
    # only the aux head's separate class layer stays at its initialisation
    assert checkpointer.not_loaded() == ["aux_head.cls_score.bias", "aux_head.cls_score.weight"]
    assert torch.equal(state["aux_head.bbox_pred.weight"], start["aux_head.bbox_pred.weight"])
    assert "Loaded only the box rows of 8 tensor(s)" in caplog.text
    assert "head.outputs.3.weight: the checkpoint has 80 classes, the model 5" in caplog.text
    # the bin check: the kept box rows fix n
    assert holds_layer(str(path), model, box_layer(model))


def test_a_checkpoint_of_another_n_is_not_fitted(converted, caplog):
    model = _model(5, **{"model.head.box2box_transform.reg_max": 10})
    checkpointer = _load(model, converted, caplog)
    not_loaded = checkpointer.not_loaded()
    assert {f"head.outputs.{i}.{p}" for i in range(4) for p in ("weight", "bias")} <= set(
        not_loaded
    )
    assert "Loaded only the box rows" not in caplog.text
    assert not holds_layer(str(converted), model, box_layer(model))


def test_same_classes_load_unchanged(converted, caplog):
    model = _model(80)
    _load(model, converted, caplog)
    start = torch.load(converted, weights_only=True)["model"]
    assert torch.equal(model.state_dict()["head.outputs.2.weight"], start["head.outputs.2.weight"])
    assert "Loaded only the box rows" not in caplog.text


def test_finetuning_config_trains_from_the_converted_weights(tmp_path, converted):
    from gfl_d2.data import write_layout
    from gfl_studies.bars import BARS_CLASSES, BARS_IDS, BarsConfig, generate_bars_split

    small = BarsConfig(min_width=64, max_width=112, min_height=48, max_height=96, max_objects=4)
    train = generate_bars_split(str(tmp_path / "r" / "train"), "train", 4, seed=0, cfg=small)
    val = generate_bars_split(str(tmp_path / "r" / "val"), "val", 2, seed=1, cfg=small)
    root = tmp_path / "data"
    write_layout("yolo", str(root), "train", train, BARS_CLASSES, BARS_IDS)
    write_layout("yolo", str(root), "val", val, BARS_CLASSES, BARS_IDS)
    out = tmp_path / "out"
    proc = run_tool(
        [
            "tools/train_net.py", "--config-file", "configs/OwnData/nanodet_plus_m_320_finetune.py",
            f"dataset.root={root}", f"train.init_checkpoint={converted}", "train.max_iter=2",
            "train.eval_period=0", "train.check_bins=2", "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
            f"train.output_dir={out}",
        ]
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Loaded only the box rows of 8 tensor(s)" in log
    assert "the checkpoint has 80 classes, the model 4" in log
    assert f"n = 7 is fixed by the trained box layer of {converted}" in log
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["model"]["head.outputs.0.weight"].shape[0] == 4 + BOX_ROWS
    assert "ema" in final
