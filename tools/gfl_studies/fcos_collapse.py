"""
Why detectron2's FCOS sometimes dies when trained from scratch on the
embedded dataset (``tools/fcos_collapse.py`` is the command line).

detectron2's ``Box2BoxTransformLinear.apply_deltas`` passes the four predicted
distances through a ReLU before the GIoU loss sees the box. A positive whose
four outputs are all <= 0 decodes to a point, its GIoU loss is about 1 and
its box gradient is exactly 0, so nothing pushes the outputs back up. The
study trains detectron2's FCOS unchanged (:class:`ClampRecordingFCOS` only
records) and logs, every ``train.log_period`` iterations:

* ``clamp/all_four``: the fraction of positives whose four distances are all
  clamped to 0 (no box gradient at all);
* ``clamp/any``: the fraction with at least one clamped;
* ``tower/zero``: the fraction of the box tower's output activations that are
  exactly 0 (after its last ReLU), the input of both the box and the
  centerness predictors;

beside the losses, for seeds that collapse and seeds that learn, at the same
settings. The report (``<name>.json``, ``<name>.md``) is written as in
:mod:`gfl_studies.reports`.
"""

from typing import Dict, List, Sequence

import torch
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.utils.events import get_event_storage

from .lr_tuning import COLLAPSED_AP
from .reports import machine, read_metrics_series, write_report

__all__ = [
    "ClampRecordingFCOS",
    "SERIES",
    "SETTINGS",
    "read_series",
    "summarize_run",
    "render",
    "collect",
]

SERIES = (
    "loss_fcos_loc",
    "loss_fcos_ctr",
    "loss_fcos_cls",
    "clamp/all_four",
    "clamp/any",
    "tower/zero",
)

# the documented detectron2 settings that bear on training stability, as overrides of the study's
# runs
# (``--settings``); detectron2's yacs form is SOLVER.CLIP_GRADIENTS, SOLVER.WARMUP_ITERS,
# SOLVER.BASE_LR
SETTINGS = {
    "as configured": [],
    "gradient clipping, global norm 35": [
        "train.clip_grad.enabled=True",
        "train.clip_grad.clip_type=norm",
        "train.clip_grad.clip_value=35.0",
    ],
    "gradient clipping, value 1.0": [
        "train.clip_grad.enabled=True",
        "train.clip_grad.clip_type=value",
        "train.clip_grad.clip_value=1.0",
    ],
    "warm-up 25% of the schedule": ["lr_multiplier.warmup_length=0.25"],
    "lr 0.01": ["optimizer.lr=0.01"],
}


class ClampRecordingFCOS(FCOS):
    """
    detectron2's FCOS, trained unchanged, that records how many positives the decoding's ReLU
    clamps.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._tower_zero = []
        self.head.bbox_subnet.register_forward_hook(self._record_tower)

    def _record_tower(self, module, inputs, output):
        if self.training:
            self._tower_zero.append(((output == 0).sum().item(), output.numel()))

    def losses(
        self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
    ):
        with torch.no_grad():
            labels = torch.stack(gt_labels)
            positive = (labels >= 0) & (labels != self.num_classes)
            deltas = torch.cat(pred_anchor_deltas, dim=1)[positive]  # (P, 4), before the ReLU
            storage = get_event_storage()
            if len(deltas):
                clamped = deltas <= 0  # relu(x) for x <= 0: 0, with gradient 0
                storage.put_scalar("clamp/all_four", clamped.all(dim=1).float().mean().item())
                storage.put_scalar("clamp/any", clamped.any(dim=1).float().mean().item())
            if self._tower_zero:
                zeros, total = map(sum, zip(*self._tower_zero))
                storage.put_scalar("tower/zero", zeros / total)
            self._tower_zero.clear()
        return super().losses(
            anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes, pred_centerness
        )


def read_series(run_dir: str) -> List[Dict]:
    """The logged training scalars of a run (``metrics.json``): one dict per logged iteration."""
    rows = read_metrics_series(run_dir, SERIES)
    if not rows:
        raise RuntimeError(
            f"{run_dir}/metrics.json has no logged training scalars of {', '.join(SERIES)}"
        )
    return rows


def summarize_run(result: Dict, series: List[Dict], setting: str = "") -> Dict:
    """
    One run of the study: seed, lr, AP, collapsed or not, its series (and its setting, if the
    study compares some).
    """
    ap = result["metrics"]["AP"]
    run = dict(
        seed=result["seed"],
        lr=result.get("lr"),
        AP=ap,
        collapsed=not ap >= COLLAPSED_AP,
        series=series,
    )
    if setting:
        run["setting"] = setting
    return run


def collect(runs: Sequence[Dict], settings: str) -> Dict:
    return dict(setup=dict(settings=settings, **machine("cpu")), runs=list(runs))


def _value(row: Dict, key: str) -> str:
    v = row.get(key)
    return "–" if v is None else f"{v:.3f}"


def _nearest(series: List[Dict], iteration: int) -> Dict:
    return min(series, key=lambda r: abs(r["iteration"] - iteration))


def render(data: Dict, at: Sequence[int] = (20, 40, 60, 80, 100, 150, 200, 300, 400, 500)) -> str:
    """The report: per run, its AP and the recorded fractions and losses at a few iterations."""
    setup = data["setup"]
    lines = [
        f"detectron2's FCOS trained unchanged ({setup['settings']}); measured {setup['date']} on "
        f"{setup['device']}, torch {setup['torch']}. Fractions over the positives of the logged "
        "iteration "
        f"(median of the logging window); a run with AP < {COLLAPSED_AP:g} counts as collapsed.",
        "",
    ]
    if any(run.get("setting") for run in data["runs"]):
        lines += _settings_table(data["runs"])
    for run in data["runs"]:
        state = "collapsed" if run["collapsed"] else "learned"
        lines += [
            f"### {run['setting'] + ', ' if run.get('setting') else ''}seed {run['seed']}"
            + (f", lr {run['lr']:g}" if run.get("lr") and not run.get("setting") else "")
            + f": AP {run['AP']:.1f} ({state})",
            "",
            "| iteration | " + " | ".join(SERIES) + " |",
            "|---:|" + "---:|" * len(SERIES),
        ]
        last = run["series"][-1]["iteration"]
        for it in sorted(
            {_nearest(run["series"], i)["iteration"] for i in at if i <= last} | {last}
        ):
            row = _nearest(run["series"], it)
            lines.append(f"| {it} | " + " | ".join(_value(row, k) for k in SERIES) + " |")
        lines.append("")
    return "\n".join(lines)


def _settings_table(runs: Sequence[Dict], at: Sequence[int] = (20, 40, 100)) -> List[str]:
    """
    One row per run: the setting, the fraction of positives with all four distances clamped over
    training, AP.
    """
    cols = [f"all_four at {i}" for i in at] + [
        "all_four at the end",
        "loss_fcos_loc at the end",
        "AP",
        "collapsed",
    ]
    lines = ["| setting | seed | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for run in runs:
        series, last = run["series"], run["series"][-1]
        cells = [_value(_nearest(series, i), "clamp/all_four") for i in at]
        cells += [
            _value(last, "clamp/all_four"),
            _value(last, "loss_fcos_loc"),
            f"{run['AP']:.1f}",
            "yes" if run["collapsed"] else "no",
        ]
        lines.append(f"| {run.get('setting', '')} | {run['seed']} | " + " | ".join(cells) + " |")
    return lines + [""]


def write(results: str, name: str, runs: Sequence[Dict], settings: str) -> str:
    return write_report(results, name, collect(runs, settings), render)
