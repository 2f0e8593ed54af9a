"""
The project's configs as package data, in the manner of ``detectron2.model_zoo``:
``gfl_d2/configs`` is the repository's ``configs/`` (a link in a checkout, a copy
in an installed wheel), so that entry points find them in any install.
"""

import os

__all__ = ["get_config_file", "get_config", "DEFAULT_CONFIG"]

_CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def get_config_file(config_path: str) -> str:
    """
    Args:
        config_path: relative to the configs folder, e.g.
            "COCO-Detection/gfl_R_50_FPN_1x.py".

    Returns:
        the file's absolute path; FileNotFoundError naming what is there if it is not.
    """
    path = os.path.join(_CONFIG_ROOT, config_path)
    if not os.path.isfile(path):
        folders = sorted(
            d for d in os.listdir(_CONFIG_ROOT) if os.path.isdir(os.path.join(_CONFIG_ROOT, d))
        )
        raise FileNotFoundError(
            f"gfl-d2 has no config {config_path!r} (its configs are under {folders})"
        )
    return path


def get_config(config_path: str):
    """
    The LazyConfig (``.py``) of ``config_path``; yacs ``.yaml`` files go through ``add_gfl_config``.
    """
    from detectron2.config import LazyConfig

    return LazyConfig.load(get_config_file(config_path))


# the embedded default: the generated shapes dataset and a small GFL that trains on a CPU
DEFAULT_CONFIG = get_config_file("Synthetic/gfl_R_18_FPN_shapes_quickstart.py")
