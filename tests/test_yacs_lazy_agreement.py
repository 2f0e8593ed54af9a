"""
A yacs config and its LazyConfig twin build the same model: the same modules,
tensors of the same shapes, the same initialisation where it is deterministic,
and the same value of every hyperparameter held by the model or any of its
parts (loss weights, β, ATSS's top-k, inference thresholds, the bins, the
quality, the anchors, the normalisation, ...), read off the built objects.
"""

import types

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from omegaconf import DictConfig, ListConfig, OmegaConf

from gfl_d2 import add_gfl_config
from gfl_d2.model_zoo import get_config_file

PAIRS = [
    ("gfl_R_50_FPN_1x.yaml", "COCO-Detection/gfl_R_50_FPN_1x.py"),
    ("gflv2_R_50_FPN_1x.yaml", "COCO-Detection/gflv2_R_50_FPN_1x.py"),
    ("gflv2_R_50_FPN_ms2x.yaml", "COCO-Detection/gflv2_R_50_FPN_ms2x.py"),
    ("gflv2_R_101_FPN_ms2x.yaml", "COCO-Detection/gflv2_R_101_FPN_ms2x.py"),
    (
        "gflv2_R_101_FPN_dconv_c3_c5_ms2x.yaml",
        "COCO-Detection/gflv2_R_101_FPN_dconv_c3_c5_ms2x.py",
    ),
    (
        "gflv2_Res2Net_101_FPN_dconv_c4_c5_ms2x.yaml",
        "COCO-Detection/gflv2_Res2Net_101_FPN_dconv_c4_c5_ms2x.py",
    ),
    ("ld_R_50_gfl_R_101_FPN_1x.yaml", "COCO-Detection/Distillation/ld_R_50_gfl_R_101_FPN_1x.py"),
]

_PLAIN = (int, float, str, bool, type(None))
# torch's own bookkeeping on every module, not a setting of the model
_MODULE_INTERNALS = {"training", "dump_patches", "call_super_init"}


def _value(v):
    """
    A comparable form of a setting: plain values, sequences and tensors of them, functions by name.
    """
    if isinstance(v, (ListConfig, DictConfig)):  # a value a LazyConfig passed as it is
        v = OmegaConf.to_container(v)
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (list, tuple)) and all(isinstance(x, _PLAIN) for x in v):
        return tuple(v)
    if isinstance(v, torch.Tensor) and v.numel() <= 16:
        return tuple(v.flatten().tolist())
    if isinstance(v, (types.FunctionType, types.MethodType)):
        return f"function {v.__qualname__}"
    return None


def settings(obj, prefix="", seen=None) -> dict:
    """Every plain attribute of ``obj`` and of the objects and modules it holds, by dotted name."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return {}
    seen.add(id(obj))
    out = {}
    attrs = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
    if isinstance(obj, torch.nn.Module):
        attrs = {k: v for k, v in attrs.items() if not k.startswith("_") or k[1:2] != "_"}
        attrs = {k: v for k, v in attrs.items() if k not in _MODULE_INTERNALS}
        for k in ("_parameters", "_modules", "_forward_hooks", "_backward_hooks"):
            attrs.pop(k, None)
        attrs.update(obj.named_buffers(recurse=False))
        attrs.update(obj.named_children())
    for name, v in sorted(attrs.items(), key=lambda kv: kv[0]):
        if (
            name.startswith("_")
            and isinstance(obj, torch.nn.Module)
            and name
            not in (
                "_output_box_distributions",
                "_num_levels",
            )
        ):
            continue
        key = f"{prefix}{name}"
        plain = _value(v)
        if plain is not None:
            out[key] = plain
        elif isinstance(v, (list, tuple, torch.nn.ModuleList)):
            for i, item in enumerate(v):
                out.update(settings(item, f"{key}.{i}.", seen))
        elif hasattr(v, "__dict__") and not isinstance(v, type):
            out[f"{key}.<type>"] = type(v).__name__
            out.update(settings(v, f"{key}.", seen))
    return out


def describe(model) -> dict:
    """The settings, the state dict's shapes and the deterministic initialisation of ``model``."""
    state = model.state_dict()
    return {
        "settings": settings(model),
        "shapes": {k: tuple(v.shape) for k, v in state.items()},
        "classifier bias": state["head.cls_score.bias"].tolist(),
    }


def differences(a: dict, b: dict) -> list:
    """The names whose values differ (or exist on one side only)."""
    diffs = []
    for part in a:
        x, y = a[part], b[part]
        if isinstance(x, dict):
            keys = sorted(set(x) | set(y))
            diffs += [
                f"{part}: {k}: {x.get(k)!r} != {y.get(k)!r}" for k in keys if x.get(k) != y.get(k)
            ]
        elif x != y:
            diffs.append(f"{part} differs")
    return diffs


def yacs_model(yaml, opts=()):
    cfg = add_gfl_config(get_cfg())
    cfg.merge_from_file(get_config_file(yaml))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def lazy_model(py, overrides=()):
    cfg = LazyConfig.load(get_config_file(py))
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def gfl_r50():
    return describe(yacs_model(PAIRS[0][0])), describe(lazy_model(PAIRS[0][1]))


@pytest.mark.parametrize("yaml, py", PAIRS, ids=[p[0] for p in PAIRS])
def test_yacs_and_lazy_configs_build_the_same_model(yaml, py):
    yacs, lazy = describe(yacs_model(yaml)), describe(lazy_model(py))
    assert len(yacs["settings"]) > 100  # the comparison reaches into every part
    assert not differences(yacs, lazy)


@pytest.mark.parametrize(
    "yacs_opts, lazy_overrides, name",
    [
        (["MODEL.GFL.QFL_BETA", "1.5"], ["model.qfl_beta=1.5"], "cls_loss.beta"),
        (["MODEL.GFL.LOSS_BBOX_WEIGHT", "1.0"], ["model.loss_bbox_weight=1.0"], "loss_bbox_weight"),
        (["MODEL.GFL.ATSS_TOPK", "7"], ["model.anchor_matcher.topk=7"], "anchor_matcher.topk"),
        (["MODEL.GFL.NMS_THRESH_TEST", "0.5"], ["model.test_nms_thresh=0.5"], "test_nms_thresh"),
        (["MODEL.GFL.PRIOR_PROB", "0.02"], ["model.head.prior_prob=0.02"], "classifier bias"),
        (
            ["MODEL.GFL.REG_MAX", "8"],
            ["model.head.box2box_transform.reg_max=8"],
            "box2box_transform.reg_max",
        ),
    ],
)
def test_a_hyperparameter_changed_on_one_side_is_found(gfl_r50, yacs_opts, lazy_overrides, name):
    """The comparison fails on each change, naming it, and agrees again when both sides change."""
    yacs, lazy = gfl_r50
    changed_yacs = describe(yacs_model(PAIRS[0][0], yacs_opts))
    diffs = differences(changed_yacs, lazy)
    assert diffs and any(name in d for d in diffs), diffs
    changed_lazy = describe(lazy_model(PAIRS[0][1], lazy_overrides))
    assert any(name in d for d in differences(yacs, changed_lazy))
    assert not differences(changed_yacs, changed_lazy)
