"""
The ``MODEL.GFL`` keys of a yacs config that set :class:`GFL`'s arguments,
derived from the constructor itself: a new argument is a new key, with no
list to keep up to date (``gfl_d2.config`` gives each key the argument's default).
"""

import inspect
from typing import List

__all__ = ["gfl_yacs_arguments", "yacs_key"]

# constructor arguments that are not MODEL.GFL keys: parts built by from_config,
# and settings detectron2's config already has (TEST.DETECTIONS_PER_IMAGE, MODEL.PIXEL_MEAN, ...)
_BUILT_OR_DETECTRON2 = {
    "self",
    "backbone",
    "head",
    "head_in_features",
    "anchor_generator",
    "anchor_matcher",
    "max_detections_per_image",
    "size_divisibility",
    "pixel_mean",
    "pixel_std",
    "input_format",
}


def yacs_key(argument: str) -> str:
    """``qfl_beta`` -> ``QFL_BETA``; inference's ``test_*`` in detectron2's manner: ``*_TEST``."""
    if argument.startswith("test_"):
        return argument[len("test_") :].upper() + "_TEST"
    return argument.upper()


def gfl_yacs_arguments() -> List[str]:
    """The arguments of :class:`GFL` that ``MODEL.GFL.<yacs_key(argument)>`` sets."""
    from .meta_arch import GFL

    params = inspect.signature(GFL.__init__).parameters
    return [name for name in params if name not in _BUILT_OR_DETECTRON2]
