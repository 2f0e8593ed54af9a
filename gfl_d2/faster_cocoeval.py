"""
faster-coco-eval's pycocotools-compatible ``COCOeval`` (C++ evaluation and
accumulation) run on pycocotools' ``COCO`` objects, the ones detectron2's
``COCOEvaluator`` builds. Importing this module imports faster-coco-eval:
:func:`gfl_d2.evaluation.fast_cocoeval` imports it only when detectron2's
compiled ``COCOeval_opt`` is missing, and falls back to pycocotools if it fails.
"""

import contextlib
import io
import numbers
from typing import Dict

from faster_coco_eval import __version__
from faster_coco_eval.core.faster_eval_api import COCOeval
from pycocotools.coco import COCO

__all__ = ["FasterCOCOeval", "__version__"]


def _image_numbering(coco) -> Dict:
    """
    ``{image id: its rank among the sorted ids}`` where the ids are not all integers
    (e.g. the file names of gfl-d2's dataset folders; faster-coco-eval takes numbers);
    empty where they are.
    """
    ids = coco.getImgIds() if coco is not None else []
    if all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in ids):
        return {}
    return {image_id: rank for rank, image_id in enumerate(sorted(ids))}


def _renumbered(coco, numbering: Dict) -> COCO:
    """A copy of ``coco`` with each image id ``i`` replaced by ``numbering[i]``."""
    dataset = dict(coco.dataset)
    dataset["images"] = [dict(im, id=numbering[im["id"]]) for im in dataset.get("images", [])]
    dataset["annotations"] = [
        dict(a, image_id=numbering[a["image_id"]]) for a in dataset.get("annotations", [])
    ]
    copy = COCO()
    copy.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        copy.createIndex()
    return copy


class FasterCOCOeval(COCOeval):
    """
    faster-coco-eval's ``COCOeval`` with pycocotools' choice of images and
    categories: all of the ground truth's, for every ``iouType`` (faster-coco-eval
    takes the keypoint categories from an index only its own ``COCO`` has). Image
    ids that are not integers are replaced by their rank in sorted order (the
    order pycocotools evaluates them in) on copies of the ``COCO`` objects.
    """

    def __init__(self, cocoGt=None, cocoDt=None, iouType="segm", **kwargs):
        super().__init__(None, None, iouType, **kwargs)
        self._numbering = _image_numbering(cocoGt)
        if self._numbering:
            cocoGt = _renumbered(cocoGt, self._numbering)
            cocoDt = _renumbered(cocoDt, self._numbering) if cocoDt is not None else None
        self.cocoGt, self.cocoDt = cocoGt, cocoDt
        if cocoGt is not None:
            self.params.imgIds = sorted(cocoGt.getImgIds())
            self.params.catIds = sorted(cocoGt.getCatIds())

    def evaluate(self):
        # image ids chosen after construction (detectron2's img_ids) are the caller's
        self.params.imgIds = [self._numbering.get(i, i) for i in self.params.imgIds]
        super().evaluate()
