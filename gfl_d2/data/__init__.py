from .validation import DatasetError, check_dataset_dicts
from .shapes import (
    CATEGORIES,
    ShapesConfig,
    build_shapes_dataset,
    prepare_shapes,
    register_shapes,
    render_image,
    write_split,
)

__all__ = [
    "CATEGORIES",
    "DatasetError",
    "check_dataset_dicts",
    "ShapesConfig",
    "build_shapes_dataset",
    "prepare_shapes",
    "register_shapes",
    "render_image",
    "write_split",
]
