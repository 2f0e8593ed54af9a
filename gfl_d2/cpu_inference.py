"""
CPU inference paths of a detector (a detectron2 ``DenseDetector`` such as GFL),
chosen by the ``cpu_inference`` setting of the entry points
(``train.cpu_inference`` of a LazyConfig, ``TEST.CPU_INFERENCE`` of a yacs
config; :func:`for_cpu_inference`):

* "eager": the model itself.
* "frozen" (:class:`FrozenCPUDetector`): the backbone and the head, traced
  once and frozen (``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``),
  which folds batch norm into the convolutions, prepacks the convolution
  weights for oneDNN and keeps activations in oneDNN's layout from one
  convolution to the next (the ReLUs and residual additions run in place on
  that layout; this torch does not fuse them into the convolutions). Eager
  PyTorch repacks every weight and converts every activation at every
  convolution, and the convolutions are about nine tenths of a detector's CPU
  time. The outputs equal eager inference up to float32 rounding (folding
  changes the order of the multiplications). The traced graph holds no
  shapes, so one build serves every image size and batch; it is rebuilt when
  any parameter or buffer changes (an optimizer step, ``load_state_dict``,
  ``.to()``).
* "fused" (:class:`FusedCPUDetector`, :mod:`gfl_d2.cpu_fused`): eager, in
  channels-last layout, with the ResNet's batch norms folded into its
  convolutions and the ReLUs and residual additions computed by the
  convolutions (oneDNN post-ops): the fastest float32 path for the ResNet
  GFLs (``tools/cpu_throughput.py``), with no trace to build, equal to eager
  up to float32 rounding; rebuilt when any parameter or buffer changes.
* "bf16" (:class:`BF16CPUDetector`): the backbone and head under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, decoding and NMS in
  float32; refused (:class:`~gfl_d2.errors.UsageError`) on a CPU without
  bfloat16 arithmetic, where it would be emulated
  (:func:`gfl_d2.cpu_features.require_native_bf16`).

Each wrapper has the detector's inputs and outputs and is the detector's own
forward wherever its path does not apply (training, a GPU, gradients).
"""

import logging
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling.postprocessing import detector_postprocess
from torch import Tensor, nn

from .cpu_features import require_native_bf16
from .cpu_fused import FusedCPUInference
from .modeling.postprocess import rescale_box_std

__all__ = [
    "CPU_INFERENCE_MODES",
    "FrozenCPUInference",
    "FrozenCPUDetector",
    "FusedCPUDetector",
    "BF16CPUDetector",
    "for_cpu_inference",
]

logger = logging.getLogger(__name__)

CPU_INFERENCE_MODES = ("eager", "frozen", "fused", "bf16")


class _BackboneAndHead(nn.Module):
    """
    image tensor (N, 3, H, W) -> (head input features, head outputs); with
    ``flat``, the same tensors as one tuple (features, then the head's
    outputs kind by kind), which is what a trace can return.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, in_features: Sequence[str]):
        super().__init__()
        self.backbone, self.head, self.in_features = backbone, head, list(in_features)
        self.flat = False

    def forward(self, x: Tensor):
        features = self.backbone(x)
        features = [features[f] for f in self.in_features]
        predictions = self.head(features)
        if self.flat:
            return tuple(features) + tuple(t for kind in predictions for t in kind)
        return features, predictions


def _state_key(module: nn.Module) -> Tuple:
    """Changes whenever a parameter or buffer of ``module`` is replaced or modified in place."""
    return tuple((id(t), t._version) for t in (*module.parameters(), *module.buffers()))


class FrozenCPUInference:
    """
    ``(features, predictions)`` of a model's backbone and head, computed by a
    frozen trace built on first use and kept while the weights stay the same.
    A module that cannot be traced falls back to eager execution, with one
    warning naming the error.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, in_features: Sequence[str]):
        self._unit = _BackboneAndHead(backbone, head, in_features)
        self._key: Optional[Tuple] = None
        self._frozen: Optional[Callable] = None
        self._failed_key: Optional[Tuple] = None

    def _build(self, example: Tensor) -> Callable:
        """The frozen trace, returning (features, predictions) as the eager unit does."""
        features, predictions = self._unit.eval()(example)
        num_features, kinds = len(features), [len(kind) for kind in predictions]
        self._unit.flat = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # the tracer's and TorchScript's deprecation warnings
                traced = torch.jit.trace(self._unit, example, check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        finally:
            self._unit.flat = False

        def run(x: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
            flat = list(frozen(x))
            features, rest, predictions = flat[:num_features], flat[num_features:], []
            for n in kinds:
                predictions.append(rest[:n])
                rest = rest[n:]
            return features, predictions

        return run

    def __call__(self, x: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        key = _state_key(self._unit) + (x.dtype,)
        if key != self._key and key != self._failed_key:
            self._frozen = None
            try:
                self._frozen = self._build(x)
                self._key = key
            except (
                Exception
            ) as e:  # a backbone or head the tracer cannot follow: eager, as without the option
                self._failed_key = key
                logger.warning(
                    f"GFL: cpu_inference='frozen' fell back to eager execution: "
                    "could not trace the "
                    f"backbone and head ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})"
                )
        if self._frozen is None or key != self._key:
            return self._unit(x)
        return self._frozen(x)


def _detect(detector: nn.Module, batched_inputs: List[dict], backbone_and_head: Callable):
    """
    ``detector(batched_inputs)`` at inference, with its backbone and head
    computed by ``backbone_and_head``: (N, 3, H, W) images -> (features, predictions).
    """
    images = detector.preprocess_image(batched_inputs)
    features, predictions = backbone_and_head(images.tensor)
    results = detector.forward_inference(images, features, predictions)
    outputs = [
        {"instances": detector_postprocess(r, x.get("height", s[0]), x.get("width", s[1]))}
        for r, x, s in zip(results, batched_inputs, images.image_sizes)
    ]
    if getattr(detector, "output_box_distributions", False):
        outputs = rescale_box_std(outputs, batched_inputs)
    return outputs


class _CPUInferenceDetector(nn.Module):
    """
    ``detector`` whose inference on the CPU (eval mode, no gradients, no
    autocast, not scripted or traced) computes its backbone and head with
    :meth:`backbone_and_head`, then the detector's own ``forward_inference``
    and detectron2's ``detector_postprocess``. Anything else (training, a GPU,
    gradients) is the detector's own forward.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector
        self.train(detector.training)  # the wrapper starts in the detector's mode

    @property
    def device(self) -> torch.device:
        return self.detector.device

    def applies(self) -> bool:
        """Whether a call now runs this path (else the detector's own forward)."""
        return (
            not self.detector.training
            and self.detector.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_scripting()
            and not torch.jit.is_tracing()
        )

    def backbone_and_head(self, images: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        raise NotImplementedError

    def forward(self, batched_inputs: List[dict]):
        if not self.applies():
            return self.detector(batched_inputs)
        return _detect(self.detector, batched_inputs, self.backbone_and_head)


class FrozenCPUDetector(_CPUInferenceDetector):
    """
    The detector with its CPU inference through :class:`FrozenCPUInference`:
    the same outputs as ``detector(batched_inputs)`` up to float32 rounding.
    """

    def __init__(self, detector: nn.Module):
        super().__init__(detector)
        self._frozen = FrozenCPUInference(
            detector.backbone, detector.head, detector.head_in_features
        )

    def runs_frozen(self) -> bool:
        """Whether a call now runs the frozen backbone and head."""
        return self.applies()

    def backbone_and_head(self, images: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        return self._frozen(images)


class FusedCPUDetector(_CPUInferenceDetector):
    """
    The detector with its CPU inference through :class:`~gfl_d2.cpu_fused.FusedCPUInference`:
    the same outputs as ``detector(batched_inputs)`` up to float32 rounding.
    """

    def __init__(self, detector: nn.Module):
        super().__init__(detector)
        self._fused = FusedCPUInference(detector.backbone, detector.head, detector.head_in_features)

    def backbone_and_head(self, images: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        return self._fused(images)


class BF16CPUDetector(_CPUInferenceDetector):
    """
    The detector with its backbone and head run under CPU autocast to
    bfloat16 (convolutions in bfloat16), the head's outputs cast back to
    float32 for decoding, the score threshold and NMS. Refused with a
    UsageError on a CPU without bfloat16 arithmetic, unless
    ``allow_emulated`` (for tests: the numbers are bfloat16's, the speed is not).
    """

    def __init__(self, detector: nn.Module, allow_emulated: bool = False):
        if not allow_emulated:
            require_native_bf16(what="cpu_inference='bf16' (bfloat16 inference)")
        super().__init__(detector)

    def backbone_and_head(self, images: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        detector = self.detector
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = detector.backbone(images)
            features = [features[f] for f in detector.head_in_features]
            predictions = detector.head(features)
        # (the features only give the anchors their sizes)
        return [f.float() for f in features], [[p.float() for p in kind] for kind in predictions]


def for_cpu_inference(
    model: nn.Module, mode: str = "eager", allow_emulated_bf16: bool = False
) -> nn.Module:
    """
    ``model`` itself for ``mode="eager"``, wrapped in :class:`FrozenCPUDetector`
    for "frozen", :class:`FusedCPUDetector` for "fused", :class:`BF16CPUDetector`
    for "bf16" (a UsageError on a CPU without bfloat16 arithmetic unless
    ``allow_emulated_bf16``).
    """
    if mode not in CPU_INFERENCE_MODES:
        raise ValueError(f"cpu_inference must be one of {CPU_INFERENCE_MODES}, got {mode!r}")
    if mode == "frozen":
        return FrozenCPUDetector(model)
    if mode == "fused":
        return FusedCPUDetector(model)
    if mode == "bf16":
        return BF16CPUDetector(model, allow_emulated=allow_emulated_bf16)
    return model
