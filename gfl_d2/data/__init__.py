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
    "ShapesConfig",
    "build_shapes_dataset",
    "prepare_shapes",
    "register_shapes",
    "render_image",
    "write_split",
]
