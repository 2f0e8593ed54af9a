"""
detectron2's end-to-end model tests (``tests/modeling/test_model_e2e.py`` in
detectron2's repository), rewritten for GFL: the same inputs and the same
assertions as for detectron2's RetinaNet and FCOS (plus Mask R-CNN's
half-empty batch), on the COCO R-50 config, the embedded config, GFL V2,
every kind of head the ablation variants build (a centerness or IoU
branch, Dirac or distribution boxes) and the QFL drop-ins. Where detectron2 only checks CUDA
autocast, the same checks also run under CPU autocast (bfloat16).
"""

import itertools
import os
import unittest
from contextlib import contextmanager
from copy import deepcopy

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from .repo import ROOT


def get_model_no_weights(config_path, overrides=()):
    """detectron2.utils.testing.get_model_no_weights for our LazyConfigs (on CUDA if any)."""
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", config_path))
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    model = instantiate(cfg.model)
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def typecheck_hook(model, *, in_dtype=None, out_dtype=None):
    """Check that the model must be called with the given input/output dtype."""
    if not isinstance(in_dtype, set):
        in_dtype = {in_dtype}
    if not isinstance(out_dtype, set):
        out_dtype = {out_dtype}

    def flatten(x):
        if isinstance(x, torch.Tensor):
            return [x]
        if isinstance(x, (list, tuple)):
            return list(itertools.chain(*[flatten(t) for t in x]))
        if isinstance(x, dict):
            return flatten(list(x.values()))
        return []

    def hook(module, input, output):
        if in_dtype is not None:
            dtypes = {x.dtype for x in flatten(input)}
            assert dtypes == in_dtype, (
                f"Expected input dtype of {type(module)} is {in_dtype}. Got {dtypes} instead!"
            )
        if out_dtype is not None:
            dtypes = {x.dtype for x in flatten(output)}
            assert dtypes == out_dtype, (
                f"Expected output dtype of {type(module)} is {out_dtype}. Got {dtypes} instead!"
            )

    with model.register_forward_hook(hook):
        yield


def create_model_input(img, inst=None):
    return {"image": img, "instances": inst} if inst is not None else {"image": img}


def get_empty_instance(h, w):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.rand(0, 4))
    inst.gt_classes = torch.tensor([]).to(dtype=torch.int64)
    inst.gt_masks = BitMasks(torch.rand(0, h, w))
    return inst


def get_regular_bitmask_instances(h, w):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.rand(3, 4))
    inst.gt_boxes.tensor[:, 2:] += inst.gt_boxes.tensor[:, :2]
    inst.gt_classes = (
        torch.tensor([3, 4, 5]).to(dtype=torch.int64) % 5
    )  # the embedded configs have 5 classes
    inst.gt_masks = BitMasks((torch.rand(3, h, w) > 0.5))
    return inst


class DenseDetectorE2ETest:
    CONFIG_PATH = None
    OVERRIDES = ()
    DROPS_NON_FINITE_BOXES = True  # GFL's models; detectron2's return them

    def setUp(self):
        torch.manual_seed(43)
        self.model = get_model_no_weights(self.CONFIG_PATH, self.OVERRIDES)

    def _test_eval(self, input_sizes):
        inputs = [create_model_input(torch.rand(3, s[0], s[1])) for s in input_sizes]
        self.model.eval()
        self.model(inputs)

    def _test_train(self, input_sizes, instances):
        assert len(input_sizes) == len(instances)
        inputs = [
            create_model_input(torch.rand(3, s[0], s[1]), inst)
            for s, inst in zip(input_sizes, instances)
        ]
        self.model.train()
        with EventStorage():
            losses = self.model(inputs)
            sum(losses.values()).backward()
            del losses

    def _inf_tensor(self, *shape):
        return 1.0 / torch.zeros(*shape, device=self.model.device)

    def _nan_tensor(self, *shape):
        return torch.zeros(*shape, device=self.model.device).fill_(float("nan"))

    def test_empty_data(self):
        instances = [get_empty_instance(200, 250), get_empty_instance(200, 249)]
        self._test_eval([(200, 250), (200, 249)])
        self._test_train([(200, 250), (200, 249)], instances)

    def test_half_empty_data(self):  # detectron2's MaskRCNNE2ETest
        instances = [get_empty_instance(200, 250), get_regular_bitmask_instances(200, 249)]
        self._test_train([(200, 250), (200, 249)], instances)

    @unittest.skipIf(not torch.cuda.is_available(), "CUDA unavailable")
    def test_eval_tocpu(self):
        model = deepcopy(self.model).cpu()
        model.eval()
        input_sizes = [(200, 250), (200, 249)]
        inputs = [create_model_input(torch.rand(3, s[0], s[1])) for s in input_sizes]
        model(inputs)

    def test_inf_nan_data(self):
        """
        detectron2's RetinaNetE2ETest, for every output of the head, made able
        to fail: the class (and quality) logits stay finite, so that every
        (location, class) is a candidate, and only the box outputs are Inf or
        NaN. GFL's models drop every such box (no detection); detectron2's
        (the QFL drop-ins) return them, all non-finite, as upstream asserts.
        """
        self.model.eval()
        self.model.score_threshold = (
            -999999999
        )  # as upstream (an attribute no dense detector reads) ...
        self.model.test_score_thresh = -999999999  # ... and the threshold the models do read
        channels = self.model.backbone.output_shape()[self.model.head_in_features[0]].channels
        images = ImageList(torch.rand(1, 3, 512, 512, device=self.model.device), [(510, 510)])
        features = [
            torch.rand(1, channels, 512 // s, 512 // s, device=self.model.device)
            for s in (4, 8, 16, 32, 64)
        ]
        with torch.no_grad():
            predictions = self.model.head(features)
            finite = self.model.forward_inference(images, features, predictions)
            self.assertGreater(
                len(finite[0]), 0
            )  # the same candidates with finite boxes are detections
            for tensor in [self._inf_tensor, self._nan_tensor]:
                poisoned = list(predictions)
                poisoned[1] = [
                    tensor(*x.shape) for x in predictions[1]
                ]  # the box outputs (index 1 in every head)
                det = self.model.forward_inference(images, features, poisoned)
                if self.DROPS_NON_FINITE_BOXES:
                    self.assertEqual(len(det[0]), 0)
                else:
                    self.assertGreater(len(det[0]), 0)
                    self.assertTrue(torch.isfinite(det[0].pred_boxes.tensor).sum() == 0)
            if (
                self.DROPS_NON_FINITE_BOXES
            ):  # upstream's case: every output Inf (scores 1, boxes Inf or NaN)
                everything = [
                    [self._inf_tensor(*x.shape) for x in per_level] for per_level in predictions
                ]
                self.assertEqual(
                    len(self.model.forward_inference(images, features, everything)[0]), 0
                )

    def _check_autocast(self, device_type, dtype):
        inputs = [{"image": torch.rand(3, 100, 100)}]
        self.model.eval()
        with torch.autocast(device_type, dtype=dtype), typecheck_hook(
            self.model.backbone, in_dtype=torch.float32, out_dtype=dtype
        ), typecheck_hook(self.model.head, in_dtype=dtype, out_dtype=dtype):
            out = self.model(inputs)[0]["instances"]
            self.assertEqual(out.pred_boxes.tensor.dtype, torch.float32)
            self.assertEqual(out.scores.dtype, dtype)

    @unittest.skipIf(not torch.cuda.is_available(), "CUDA not available")
    def test_autocast(self):
        self._check_autocast("cuda", torch.float16)

    def test_autocast_cpu(self):
        self.model.cpu()
        self._check_autocast("cpu", torch.bfloat16)


class GFLCOCOE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    CONFIG_PATH = "COCO-Detection/gfl_R_50_FPN_1x.py"


class GFLShapesE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    CONFIG_PATH = "Synthetic/gfl_R_18_FPN_shapes.py"


class GFLV2ShapesE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    """GFL V2: the distribution-guided quality predictor multiplying the score."""

    CONFIG_PATH = "Synthetic/gflv2_R_18_FPN_shapes.py"


class ATSSShapesE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    """Focal Loss, a separate centerness branch, Dirac boxes."""

    CONFIG_PATH = "Synthetic/atss_R_18_FPN_shapes.py"


class IoUBranchDistributionE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    """A separate IoU branch with general distributions."""

    CONFIG_PATH = "Synthetic/Ablations/atss_dfl_R_18_FPN_shapes.py"
    OVERRIDES = ("model.head.quality=iou",)


class JointDiracE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    """QFL's joint score with Dirac boxes (ATSS + QFL)."""

    CONFIG_PATH = "Synthetic/Ablations/atss_qfl_R_18_FPN_shapes.py"


class QFLRetinaNetE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    CONFIG_PATH = "Synthetic/retinanet_qfl_R_18_FPN_shapes.py"
    DROPS_NON_FINITE_BOXES = False


class QFLFCOSE2ETest(DenseDetectorE2ETest, unittest.TestCase):
    CONFIG_PATH = "Synthetic/fcos_qfl_R_18_FPN_shapes.py"
    DROPS_NON_FINITE_BOXES = False
