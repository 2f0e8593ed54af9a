"""gfl-d2: Generalized Focal Loss (GFL V1 and V2) and Localization
Distillation (LD) for detectron2.

Importing this package registers the ``GFL`` meta-architecture and the
``build_gfl_resnet_fpn_backbone`` backbone in detectron2's registries.
"""

from .config import add_gfl_config
from .modeling import GFL, GFLHead, LocalizationDistiller  # importing registers "GFL"

__all__ = ["add_gfl_config", "GFL", "GFLHead", "LocalizationDistiller"]

__version__ = "0.1.0"
