"""
GFL V2 with a Res2Net-101-v1d 26w x 4s backbone (the deep stem, four 26-channel
splits per bottleneck in res2, average-pool shortcuts) and deformable
convolutions (v1, ``DCN``) in the split convs of res4-res5, FPN, multi-scale
2x: the authors' ``gfocal_r2n101_dcn_fpn_ms2x`` (implus/GFocalV2), their best
model. Published: 49.9 AP on COCO minival, 50.5 on test-dev.

Training starts from the ImageNet Res2Net-101-v1d 26w x 4s of MMDetection's
``open-mmlab://res2net101_v1d_26w_4s``, converted once with
``tools/convert_mmdet_checkpoint.py`` (it recognises a backbone-only file)
to ``pretrained/Res2Net-101-v1d.pth``; the offset convs start at zero.
"""

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import ResNet

from gfl_d2.modeling.res2net import DeepStem, make_res2net_stages

from .gflv2_R_101_FPN_ms2x import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up = L(ResNet)(
    stem=L(DeepStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    stages=L(make_res2net_stages)(
        depth=101,
        scales=4,
        base_width=26,
        deform_on_per_stage=[False, False, True, True],
        deform_modulated=False,
        deform_num_groups=1,
        norm="FrozenBN",
    ),
    out_features=["res3", "res4", "res5"],
    freeze_at=2,
)
train.init_checkpoint = "pretrained/Res2Net-101-v1d.pth"
