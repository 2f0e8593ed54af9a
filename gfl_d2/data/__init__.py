"""
Datasets for GFL: dataset folders in three formats (COCO, Pascal VOC, YOLO;
:mod:`gfl_d2.data.formats`) read into detectron2's dataset dicts and
registered with its catalogs (:mod:`gfl_d2.data.folders`), the record policy
for boxes that do not fit their image (:mod:`gfl_d2.data.box_policy`), the
dataset check before training, detectron2's ``DatasetMapper`` made faster for
boxes (:mod:`gfl_d2.data.mapper`), and the generated shapes dataset
(:mod:`gfl_d2.data.shapes`).
"""

from .folder_dataset import FolderDataset, image_size
from .folders import (
    LAYOUTS,
    dataset_classes,
    dataset_num_classes,
    detect_layout,
    read_dataset_folder,
    register_dataset,
    write_layout,
)
from .formats import DATASET_FORMATS, get_format
from .mapper import BoxDatasetMapper
from .problems import DatasetError, DatasetProblems
from .shapes import (
    CATEGORIES,
    ShapesConfig,
    build_shapes_dataset,
    prepare_shapes,
    register_shapes,
    render_image,
    write_split,
)
from .validation import check_dataset_dicts

__all__ = [
    "CATEGORIES",
    "DatasetError",
    "DatasetProblems",
    "check_dataset_dicts",
    "BoxDatasetMapper",
    "ShapesConfig",
    "build_shapes_dataset",
    "prepare_shapes",
    "register_shapes",
    "render_image",
    "write_split",
    "FolderDataset",
    "image_size",
    "DATASET_FORMATS",
    "get_format",
    "LAYOUTS",
    "detect_layout",
    "read_dataset_folder",
    "register_dataset",
    "dataset_classes",
    "dataset_num_classes",
    "write_layout",
]
