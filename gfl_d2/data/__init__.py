from .validation import DatasetError, DatasetProblems, check_dataset_dicts
from .shapes import (
    CATEGORIES,
    ShapesConfig,
    build_shapes_dataset,
    prepare_shapes,
    register_shapes,
    render_image,
    write_split,
)
from .folder_dataset import FolderDataset, image_size
from .folders import LAYOUTS, dataset_classes, dataset_num_classes, detect_layout, read_dataset_folder, register_dataset
from .layout_writers import write_coco, write_layout, write_voc, write_yolo
from .bars import BARS_CLASSES, BARS_IDS, BarsConfig, write_bars_dataset

__all__ = [
    "CATEGORIES",
    "DatasetError",
    "DatasetProblems",
    "check_dataset_dicts",
    "ShapesConfig",
    "build_shapes_dataset",
    "prepare_shapes",
    "register_shapes",
    "render_image",
    "write_split",
    "FolderDataset",
    "image_size",
    "LAYOUTS",
    "detect_layout",
    "read_dataset_folder",
    "register_dataset",
    "dataset_classes",
    "dataset_num_classes",
    "write_coco",
    "write_voc",
    "write_yolo",
    "write_layout",
    "BARS_CLASSES",
    "BARS_IDS",
    "BarsConfig",
    "write_bars_dataset",
]
