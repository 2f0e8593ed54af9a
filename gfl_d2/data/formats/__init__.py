"""
The dataset-folder formats, one module each with the same interface
(:class:`~gfl_d2.data.formats.base.DatasetFormat`: detect, class names,
read, write), in one registry. Only this package knows a format; the rest of
the project asks the registry (:func:`get_format`).

A new format is a module with a ``FORMAT`` (see ``coco.py``) added to
:data:`DATASET_FORMATS`.
"""

from typing import Dict, Sequence

from ..problems import DatasetError
from . import coco, voc, yolo
from .base import DatasetFormat

__all__ = ["DATASET_FORMATS", "LAYOUTS", "DatasetFormat", "get_format"]

DATASET_FORMATS: Dict[str, DatasetFormat] = {
    f.name: f for f in (coco.FORMAT, voc.FORMAT, yolo.FORMAT)
}
LAYOUTS = tuple(DATASET_FORMATS)


def get_format(layout: str, also: Sequence[str] = ()) -> DatasetFormat:
    """
    The format named ``layout``; DatasetError listing the known names (and
    ``also``: other words the caller accepts, e.g. "auto") if it is unknown.
    """
    fmt = DATASET_FORMATS.get(str(layout).lower())
    if fmt is None:
        raise DatasetError(
            f"unknown dataset layout {layout!r}: one of {', '.join([*also, *LAYOUTS])}"
        )
    return fmt
