"""
The protected parts of detectron2 and fvcore that gfl-d2 relies on, named in
one place. Each is an extension point of a class gfl-d2 subclasses (a method
detectron2's own subclasses override too) or a step that has no public
equivalent; ``tests/test_detectron2_internals.py`` fails, naming the API, if
the installed detectron2 changes one of them.

- ``fvcore Checkpointer._load_file(f)``: ``CheckedCheckpointer`` (a clear error
  for an unreadable file) and :func:`read_checkpoint_file`;
- ``fvcore Checkpointer._load_model(checkpoint)``: ``CheckedCheckpointer`` (what
  was not loaded);
- ``DetectionCheckpointer._parsed_url_during_load``: :func:`read_checkpoint_file`;
- ``DenseDetector._transpose_dense_predictions(predictions, dims)``: ``GFL`` (its
  own predictions, as detectron2's RetinaNet and FCOS);
- ``DenseDetector._move_to_current_device(x)``: ``GFL.preprocess_image``;
- ``SimpleTrainer._write_metrics(loss_dict, data_time, ...)``:
  ``gfl_d2.train_loop`` (names the non-finite loss terms);
- ``COCOEvaluator._derive_coco_results(coco_eval, ...)``:
  ``COCOEvaluatorWithCurves`` (the precision-recall pictures);
- the module global ``detectron2.evaluation.coco_evaluation.COCOeval_opt``
  (the fast path's class, pycocotools' ``COCOeval`` where detectron2's compiled
  ops are missing), read by ``COCOEvaluator.__init__`` and
  ``COCOEvaluator._eval_predictions``: :func:`gfl_d2.evaluation.use_fast_cocoeval`
  (``PROTECTED_GLOBALS``).
"""

from typing import Dict
from urllib.parse import urlparse

__all__ = ["read_checkpoint_file", "PROTECTED_APIS", "PROTECTED_GLOBALS"]

# (module, class, attribute, the parameters gfl-d2 passes or overrides with)
PROTECTED_APIS = [
    ("fvcore.common.checkpoint", "Checkpointer", "_load_file", ("self", "f")),
    ("fvcore.common.checkpoint", "Checkpointer", "_load_model", ("self", "checkpoint")),
    ("detectron2.checkpoint", "DetectionCheckpointer", "_load_file", ("self", "filename")),
    (
        "detectron2.modeling.meta_arch.dense_detector",
        "DenseDetector",
        "_transpose_dense_predictions",
        ("self", "predictions", "dims_per_anchor"),
    ),
    (
        "detectron2.modeling.meta_arch.dense_detector",
        "DenseDetector",
        "_move_to_current_device",
        ("self", "x"),
    ),
    (
        "detectron2.engine.train_loop",
        "SimpleTrainer",
        "_write_metrics",
        ("self", "loss_dict", "data_time", "prefix", "iter"),
    ),
    (
        "detectron2.evaluation",
        "COCOEvaluator",
        "_derive_coco_results",
        ("self", "coco_eval", "iou_type", "class_names"),
    ),
]

# (module, global gfl-d2 rebinds, the functions of that module that must read it at call time)
PROTECTED_GLOBALS = [
    (
        "detectron2.evaluation.coco_evaluation",
        "COCOeval_opt",
        ("COCOEvaluator.__init__", "COCOEvaluator._eval_predictions"),
    ),
]


def read_checkpoint_file(checkpointer, local_path: str) -> Dict:
    """
    A checkpoint file read as ``checkpointer.load`` reads it (detectron2's
    ``.pkl`` formats and torch files), without loading it into a model: the
    checkpointer's ``_load_file``, after setting the parsed URL that
    ``DetectionCheckpointer.load`` sets before calling it.
    """
    checkpointer._parsed_url_during_load = urlparse(local_path)
    return checkpointer._load_file(local_path)
