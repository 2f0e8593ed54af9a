"""
MMDetection's GFL on the CPU or a GPU without mmcv's compiled ops: for the
tests that compare with the real library and for the benchmark's MMDetection
peer (:mod:`gfl_studies.mmdet_peer`).

MMDetection 3.3 (``pip install mmdet==3.3.0 mmengine==0.10.7 mmcv-lite==2.1.0``)
runs its ResNet, FPN and ``GFLHead`` in pure Python, but ``mmcv.ops`` imports the
compiled module ``mmcv._ext`` that ``mmcv-lite`` does not ship. ``import_mmdet``
installs a stand-in for it whose ``nms`` is torchvision's (the only compiled op
GFL's inference calls; mmcv's own ``batched_nms`` runs unchanged on top of it)
and whose other ops raise when called. mmcv's deformable convolutions
(``DCN``, ``DCNv2``) run through ``torchvision.ops.deform_conv2d``, as mmcv's
own MLU classes do (``mmcv/ops/deform_conv.py``): same modules, parameters and
offset layout, only the kernel differs.

Nothing here imports mmdet before a function is called; the tests and the
benchmark check :func:`mmdet_available` first.
"""

import importlib.util
import logging
import os
import sys
import types

import torch
import torchvision

__all__ = [
    "mmdet_available",
    "import_mmdet",
    "build_mmdet_gfl",
    "MMDET_CONFIGS",
    "trained_like",
    "save_as_mmdet",
    "mmdet_sample",
]

# the released GFL and LD configs of MMDetection 3.3
MMDET_CONFIGS = {
    "R-50 1x": "gfl/gfl_r50_fpn_1x_coco.py",
    "R-50 ms2x": "gfl/gfl_r50_fpn_ms-2x_coco.py",
    "R-101 ms2x": "gfl/gfl_r101_fpn_ms-2x_coco.py",
    "X-101-32x4d ms2x": "gfl/gfl_x101-32x4d_fpn_ms-2x_coco.py",
    "R-101-DCN ms2x": "gfl/gfl_r101-dconv-c3-c5_fpn_ms-2x_coco.py",
    "X-101-32x4d-DCN ms2x": "gfl/gfl_x101-32x4d-dconv-c4-c5_fpn_ms-2x_coco.py",
    "LD R-18 student": "ld/ld_r18-gflv1-r101_fpn_1x_coco.py",
    "LD R-34 student": "ld/ld_r34-gflv1-r101_fpn_1x_coco.py",
}
# GFocalV2's gfocal_r2n101_dcn_fpn_ms2x backbone (implus/GFocalV2), on MMDetection 3.3's Res2Net
RES2NET_101_DCN = dict(
    type="Res2Net",
    depth=101,
    scales=4,
    base_width=26,
    num_stages=4,
    out_indices=(0, 1, 2, 3),
    frozen_stages=1,
    norm_cfg=dict(type="BN", requires_grad=True),
    dcn=dict(type="DCN", deform_groups=1, fallback_on_stride=False),
    stage_with_dcn=(False, False, True, True),
    norm_eval=True,
    style="pytorch",
)


def mmdet_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mmdet", "mmengine", "mmcv"))


class _CompiledOpsStandIn(types.ModuleType):
    """``mmcv._ext`` without compilation: ``nms`` from torchvision, every other op raises."""

    @staticmethod
    def nms(boxes, scores, iou_threshold, offset):
        if offset != 0:
            raise NotImplementedError(
                "nms with offset=1 is not available without mmcv's compiled ops"
            )
        return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise NotImplementedError(
                f"mmcv op {name!r} needs mmcv's compiled ops (mmcv-lite has none)"
            )

        return unavailable


def _deform_forward(self, x):
    """``DeformConv2dPack.forward`` through torchvision's op (mmcv's MLU class does the same)."""
    offset = self.conv_offset(x)
    return torchvision.ops.deform_conv2d(
        x, offset, self.weight, None, self.stride, self.padding, self.dilation
    )


def _modulated_deform_forward(self, x):
    """``ModulatedDeformConv2dPack.forward`` through torchvision's op, mmcv's mask split."""
    o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
    return torchvision.ops.deform_conv2d(
        x, torch.cat((o1, o2), dim=1), self.weight, self.bias, self.stride, self.padding,
        self.dilation, mask.sigmoid(),
    )  # fmt: skip


def import_mmdet():
    """Import mmdet with the stand-in for ``mmcv._ext``; returns the mmdet module."""
    if "mmcv._ext" not in sys.modules:
        try:
            import mmcv._ext  # noqa: F401  (a full mmcv build: use it)
        except ImportError:
            sys.modules["mmcv._ext"] = _CompiledOpsStandIn("mmcv._ext")
    if isinstance(sys.modules["mmcv._ext"], _CompiledOpsStandIn):
        from mmcv.ops import DeformConv2dPack, ModulatedDeformConv2dPack

        DeformConv2dPack.forward = _deform_forward
        ModulatedDeformConv2dPack.forward = _modulated_deform_forward
    import mmdet
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return mmdet


def build_mmdet_gfl(config: str = MMDET_CONFIGS["R-50 1x"], seed: int = 0, backbone=None):
    """
    A GFL detector built by MMDetection from its own config file, with its own
    ``init_weights`` (no pretrained backbone is downloaded: ``init_cfg`` off;
    an LD student's teacher is built from its config, without its checkpoint).
    ``backbone`` (an mmdet backbone config) replaces the config's.

    Returns:
        (model in eval mode, the mmengine Config)
    """
    import_mmdet()
    import mmdet
    from mmdet.registry import MODELS
    from mmengine.config import Config

    configs = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    cfg = Config.fromfile(os.path.join(configs, config))
    if backbone is not None:
        cfg.model.backbone = dict(backbone)
    cfg.model.backbone.init_cfg = None
    if "teacher_config" in cfg.model:
        teacher = Config.fromfile(
            os.path.join(configs, cfg.model.teacher_config[len("configs/") :])
        )
        teacher.model.backbone.init_cfg = None
        cfg.model.teacher_config, cfg.model.teacher_ckpt = teacher, None
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every tensor at INFO
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    model.eval()  # the LD detector's train() returns None
    return model, cfg


def _calibrate_batch_norm(backbone, generator) -> None:
    """
    BatchNorm statistics of one random image (as a trained network's): every block's output
    then has unit scale, so every block, not only the shortcuts, shapes the features.
    """
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.momentum = 1.0  # keep this batch's statistics
    backbone.train()
    backbone(torch.randn(2, 3, 128, 192, generator=generator))
    backbone.eval()


def trained_like(model, seed: int = 0, offset_pixels: float = 2.0):
    """
    Head weights that give confident, varied detections (at initialisation every score is
    ~0.01), offset convs (zero at initialisation) that move the deformable convs'
    samples by about ``offset_pixels``, most of them off the pixel grid, and backbone
    BatchNorm statistics of a random image.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.bbox_head.parameters():
            if p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
        model.bbox_head.gfl_cls.bias.fill_(-2.0)
        for name, m in model.backbone.named_modules():
            if name.endswith("conv_offset"):
                m.weight.copy_(
                    torch.randn(m.weight.shape, generator=g) * 0.5 / m.weight[0].numel() ** 0.5
                )
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * offset_pixels)
        _calibrate_batch_norm(model.backbone, g)
    return model


def save_as_mmdet(model, path: str, **extra) -> None:
    """Save as MMDetection's runner does (mmengine's save_checkpoint of meta + CPU state dict)."""
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu

    checkpoint = {
        "meta": {"dataset_meta": {"classes": tuple(f"c{i}" for i in range(80))}, "epoch": 12}
    }
    checkpoint["state_dict"] = weights_to_cpu(get_state_dict(model))
    checkpoint.update(extra)
    save_checkpoint(checkpoint, str(path))


def mmdet_sample(height: int, width: int, boxes=None, labels=None):
    """
    A ``DetDataSample`` of an unscaled image; with ``boxes`` (K, 4) and ``labels`` (K,), its
    ground truth.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    sample = DetDataSample(
        metainfo=dict(
            img_shape=(height, width),
            ori_shape=(height, width),
            scale_factor=(1.0, 1.0),
            pad_shape=(height, width),
        )
    )
    if boxes is not None:
        sample.gt_instances = InstanceData(bboxes=boxes, labels=labels)
    return sample
