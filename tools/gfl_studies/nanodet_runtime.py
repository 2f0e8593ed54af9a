"""
NanoDet's own model code (RangiLyu/nanodet) in a side environment, for the
tests that compare gfl-d2's NanoDet-Plus parts with it. NanoDet is not on
PyPI and its package imports PyTorch Lightning at import time (``nanodet.util``)
though its model code does not use it: :func:`import_nanodet` puts a NanoDet
source tree (``NANODET_SRC``) on the path and stands in for ``pytorch_lightning``,
``lightning_fabric`` and ``lightning`` with empty modules. Never a dependency of
gfl-d2; nothing here runs unless a test asks and ``NANODET_SRC`` is set.

    git clone https://github.com/RangiLyu/nanodet /path/to/nanodet   # once
    NANODET_SRC=/path/to/nanodet python -m pytest tests/test_nanodet_e2e.py
"""

import importlib.abc
import importlib.machinery
import os
import sys
from unittest import mock

__all__ = ["nanodet_source", "nanodet_available", "import_nanodet", "build_nanodet", "CONFIGS"]

# the released NanoDet-Plus configs (config/ of NanoDet's repository) and gfl-d2's backbone size
CONFIGS = {
    "m 320": ("nanodet-plus-m_320.yml", "1.0x", 96),
    "m 416": ("nanodet-plus-m_416.yml", "1.0x", 96),
    "m-1.5x 320": ("nanodet-plus-m-1.5x_320.yml", "1.5x", 128),
    "m-1.5x 416": ("nanodet-plus-m-1.5x_416.yml", "1.5x", 128),
}
_STUBBED = ("pytorch_lightning", "lightning_fabric", "lightning")


def nanodet_source():
    """The NanoDet source tree of ``NANODET_SRC`` (with ``nanodet/`` and ``config/``), or None."""
    root = os.environ.get("NANODET_SRC")
    ok = root and all(os.path.isdir(os.path.join(root, d)) for d in ("nanodet", "config"))
    return root if ok else None


def nanodet_available() -> bool:
    return nanodet_source() is not None


class _EmptyModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Any module under the stubbed packages imports as an object whose every attribute exists."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in _STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__ = [], spec
        return module

    def exec_module(self, module):
        pass


def import_nanodet():
    """Put ``NANODET_SRC`` on the path with Lightning stood in for; the ``nanodet`` module."""
    root = nanodet_source()
    if root is None:
        raise RuntimeError("set NANODET_SRC to a NanoDet source tree (nanodet/ and config/)")
    if not any(isinstance(f, _EmptyModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _EmptyModules())
    if root not in sys.path:
        sys.path.insert(0, root)
    import nanodet

    return nanodet


def build_nanodet(config: str):
    """NanoDet's model built by its own ``build_model`` from ``config/<config>``, no download."""
    import_nanodet()
    from nanodet.model.arch import build_model
    from nanodet.util import cfg, load_config

    load_config(cfg, os.path.join(nanodet_source(), "config", config))
    cfg.defrost()
    cfg.model.arch.backbone.pretrain = False
    return build_model(cfg.model), cfg
