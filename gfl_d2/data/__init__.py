from .shapes import CATEGORIES, ShapesConfig, build_shapes_dataset, register_shapes, render_image, write_split

__all__ = ["CATEGORIES", "ShapesConfig", "build_shapes_dataset", "register_shapes", "render_image", "write_split"]
