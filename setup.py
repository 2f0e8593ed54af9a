#!/usr/bin/env python
"""gfl-d2: Generalized Focal Loss (GFL V1 and V2) and Localization Distillation for detectron2.

Two packages: ``gfl_d2``, the library, and ``gfl_studies``
(``tools/gfl_studies``), the studies behind the measured results (ablations,
benchmark, GPU check, ...), which import the library and are never imported
by it.
"""

from setuptools import find_packages, setup

setup(
    name="gfl-d2",
    version="0.1.0",
    description=(
        "Generalized Focal Loss (GFL V1 and V2) dense detectors and Localization "
        "Distillation (LD) for detectron2"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gfl_d2", "gfl_d2.*"]) + ["gfl_studies"],
    package_dir={"gfl_studies": "tools/gfl_studies"},
    # gfl_d2/configs links to the repository's configs/: a wheel carries a copy
    package_data={
        "gfl_d2": ["configs/*.yaml", "configs/*/*.yaml", "configs/*/*.py", "configs/*/*/*.py"]
    },
    python_requires=">=3.8",
    # detectron2 itself is not on PyPI under its own name: tools/install.sh
    # installs it. These are the packages gfl_d2 imports directly.
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore",
        "pycocotools",
        "faster-coco-eval",  # COCO evaluation's fast path without detectron2's compiled ops
        "omegaconf>=2.1,<2.4",
        "numpy",
        "Pillow",
        "tqdm",
        "pyyaml",  # YOLO data.yaml
        "matplotlib",  # the precision-recall pictures
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3.2", "onnx", "onnxruntime", "ruff==0.17.6"]
    },
)
