"""
detectron2's ``COCOEvaluator`` that also draws what its numbers summarise:
after each evaluation, one picture with the precision-recall curve of every
class (IoU 0.5 and 0.75) and the AP of every class by object size, written
next to the training metrics. The per-class AP table is detectron2's own.

COCO evaluation's fast path on any Python: detectron2's ``COCOEvaluator``
(``use_fast_impl=True``, its default) runs its compiled ``COCOeval_opt``, and
where ``detectron2._C`` is not built (e.g. on a Python detectron2 has no
compiled ops for) falls back to pycocotools' ``COCOeval``, slow on COCO-sized
sets. :func:`use_fast_cocoeval` puts faster-coco-eval's ``COCOeval`` in its
place; gfl-d2's entry points call it before building their evaluators.
"""

import functools
import logging
import os
from typing import Optional, Sequence

import numpy as np
from detectron2.engine import HookBase
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import get_event_storage

__all__ = [
    "COCOEvaluatorWithCurves",
    "CountIterations",
    "plot_precision_recall",
    "ap_by_size",
    "fast_cocoeval",
    "use_fast_cocoeval",
]

logger = logging.getLogger(__name__)

# COCOeval's area ranges, in the order of its precision array
_AREAS = ("all", "small", "medium", "large")


def ap_by_size(precision: np.ndarray) -> np.ndarray:
    """
    AP (0-100) per class and area range from COCOeval's ``eval["precision"]``
    (T IoUs, R recalls, K classes, A areas, M max-dets): ``(K, A)``, NaN where
    a class has no object of that size.
    """
    p = precision[..., -1]  # the largest max-dets (100)
    valid = p > -1
    summed = np.where(valid, p, 0.0).sum(axis=(0, 1))
    count = valid.sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, summed / np.maximum(count, 1) * 100, np.nan)


def _plot_pr_curves(ax, precision, ious, recalls, class_names, iou, colours) -> None:
    """One panel: each class's precision-recall curve at the IoU threshold nearest ``iou``."""
    t = int(np.argmin(np.abs(ious - iou)))
    for k, name in enumerate(class_names):
        curve = precision[t, :, k, 0, -1]
        if (curve > -1).any():
            ap = curve[curve > -1].mean() * 100
            label = f"{name} ({ap:.1f})"
            ax.plot(recalls, np.clip(curve, 0, None), color=colours[k], label=label)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title=f"precision-recall at IoU {ious[t]:.2f} (AP{int(round(ious[t] * 100))} per class)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=1 + len(class_names) // 12)


def _plot_ap_by_size(ax, aps: np.ndarray, class_names: Sequence[str]) -> None:
    """One panel: each class's AP by object size, a bar per area range."""
    x = np.arange(len(class_names))
    width = 0.2
    for a, area in enumerate(_AREAS):
        ax.bar(x + (a - 1.5) * width, np.nan_to_num(aps[:, a]), width, label=area)
    ax.set_xticks(x)
    many = len(class_names) > 6
    ax.set_xticklabels(
        class_names, rotation=45 if many else 0, ha="right" if many else "center", fontsize=8
    )
    ax.set(
        ylabel="AP (IoU 0.50:0.95)",
        title="AP per class by object size (absent sizes: no bar)",
        ylim=(0, 100),
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def plot_precision_recall(
    precision: np.ndarray,
    iou_thresholds: Sequence[float],
    recall_thresholds: Sequence[float],
    class_names: Sequence[str],
    path: str,
    title: str = "",
) -> str:
    """
    Write the picture (per-class PR curves at IoU 0.5 and 0.75, per-class AP by
    size) to ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ious, recalls = np.asarray(iou_thresholds), np.asarray(recall_thresholds)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(class_names), 2)))
    for ax, iou in zip(axes[:2], (0.5, 0.75)):
        _plot_pr_curves(ax, precision, ious, recalls, class_names, iou, colours)
    _plot_ap_by_size(axes[2], ap_by_size(precision), class_names)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


@functools.lru_cache(maxsize=None)
def fast_cocoeval() -> type:
    """
    The ``COCOeval`` class for detectron2's fast path: detectron2's compiled
    ``COCOeval_opt`` where ``detectron2._C`` is built, otherwise faster-coco-eval's
    (:class:`gfl_d2.faster_cocoeval.FasterCOCOeval`), otherwise pycocotools'
    ``COCOeval`` with a warning naming why. The choice is logged once.
    """
    try:
        from detectron2.evaluation.fast_eval_api import COCOeval_opt
    except ImportError as e:
        missing = f"detectron2's compiled COCOeval_opt is not built ({type(e).__name__}: {e})"
    else:
        logger.info("COCO evaluation's fast path: detectron2's compiled COCOeval_opt")
        return COCOeval_opt
    try:
        from .faster_cocoeval import FasterCOCOeval, __version__
    except Exception as e:  # not installed, or its compiled module does not load
        from pycocotools.cocoeval import COCOeval

        logger.warning(
            f"COCO evaluation runs pycocotools' COCOeval, slow on COCO-sized sets: {missing}, "
            f"and faster-coco-eval cannot be imported ({type(e).__name__}: {e})"
        )
        return COCOeval
    logger.info(
        f"COCO evaluation's fast path: faster-coco-eval {__version__}'s COCOeval; {missing}"
    )
    return FasterCOCOeval


def use_fast_cocoeval() -> type:
    """
    Give detectron2's ``COCOEvaluator`` a fast path where its compiled one is
    missing: detectron2 then binds ``coco_evaluation.COCOeval_opt`` to
    pycocotools' ``COCOeval`` and turns ``use_fast_impl`` off; this binds it to
    :func:`fast_cocoeval` instead, so evaluators built afterwards keep
    ``use_fast_impl`` and run it (``use_fast_impl=False``: pycocotools, as
    always). Returns the fast path's class.
    """
    from detectron2.evaluation import coco_evaluation

    chosen = fast_cocoeval()
    if coco_evaluation.COCOeval_opt is coco_evaluation.COCOeval:
        coco_evaluation.COCOeval_opt = chosen  # see gfl_d2.detectron2_internals
    return chosen


class CountIterations(HookBase):
    """
    Tells the evaluation how many iterations are done (put it before
    ``EvalHook``): during training the storage holds the current iteration's
    index, after training the number of iterations; this holds the count.
    """

    def after_step(self):
        self.trainer.storage.completed_iterations = self.trainer.iter + 1

    def after_train(self):
        self.trainer.storage.completed_iterations = self.trainer.iter


def _iteration_tag() -> str:
    try:
        storage = get_event_storage()
    except AssertionError:  # evaluation outside training
        return "eval"
    return f"iter_{getattr(storage, 'completed_iterations', storage.iter + 1):07d}"


class COCOEvaluatorWithCurves(COCOEvaluator):
    """
    ``COCOEvaluator`` (same arguments) that also writes
    ``<plot_dir>/pr_curves_<dataset>_<iteration>.png`` after each bbox
    evaluation (``plot_dir`` None: no picture). Its fast path is
    :func:`use_fast_cocoeval`'s.
    """

    def __init__(self, dataset_name: str, *args, plot_dir: Optional[str] = None, **kwargs):
        use_fast_cocoeval()
        super().__init__(dataset_name, *args, **kwargs)
        self._plot_dir = plot_dir
        self._dataset_name = dataset_name

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None or iou_type != "bbox" or not self._plot_dir:
            return results
        precision = coco_eval.eval["precision"]
        names = list(class_names) if class_names else [str(i) for i in range(precision.shape[2])]
        tag = _iteration_tag()
        path = os.path.join(self._plot_dir, f"pr_curves_{self._dataset_name}_{tag}.png")
        ap = results.get("AP", float("nan"))
        title = f"{self._dataset_name}, {tag.replace('_', ' ')}: AP {ap:.1f}"
        try:
            plot_precision_recall(
                precision, coco_eval.params.iouThrs, coco_eval.params.recThrs, names, path, title
            )
        except Exception as e:  # a picture must never cost the evaluation
            self._logger.warning(
                f"Could not draw the precision-recall curves: {type(e).__name__}: {e}"
            )
            return results
        self._logger.info(f"Precision-recall curves and AP by object size: {path}")
        return results
