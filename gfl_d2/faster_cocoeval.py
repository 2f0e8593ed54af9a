"""
faster-coco-eval's pycocotools-compatible ``COCOeval`` (C++ evaluation and
accumulation) run on pycocotools' ``COCO`` objects, the ones detectron2's
``COCOEvaluator`` builds. Importing this module imports faster-coco-eval:
:func:`gfl_d2.evaluation.fast_cocoeval` imports it only when detectron2's
compiled ``COCOeval_opt`` is missing, and falls back to pycocotools if it fails.
"""

from faster_coco_eval import __version__
from faster_coco_eval.core.faster_eval_api import COCOeval

__all__ = ["FasterCOCOeval", "__version__"]


class FasterCOCOeval(COCOeval):
    """
    faster-coco-eval's ``COCOeval`` with pycocotools' choice of images and
    categories: all of the ground truth's, for every ``iouType`` (faster-coco-eval
    takes the keypoint categories from an index only its own ``COCO`` has).
    """

    def __init__(self, cocoGt=None, cocoDt=None, iouType="segm", **kwargs):
        super().__init__(None, None, iouType, **kwargs)
        self.cocoGt, self.cocoDt = cocoGt, cocoDt
        if cocoGt is not None:
            self.params.imgIds = sorted(cocoGt.getImgIds())
            self.params.catIds = sorted(cocoGt.getCatIds())
