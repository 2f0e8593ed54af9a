#!/usr/bin/env python
"""
Run a GFL config + weights on images and write them with the detections drawn
by detectron2's ``Visualizer``.

    python tools/demo.py --input img1.jpg img2.jpg folder/ --output out/ \
        train.init_checkpoint=output/gfl_R_18_FPN_shapes/model_final.pth

With no ``--config-file`` the embedded shapes config is used. Trailing
``key=value`` pairs override the config (``train.init_checkpoint`` picks the
weights).
"""

import logging
import os
import sys

from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

import gfl_d2  # noqa: F401,E402
from gfl_d2.cli import config_argument_parser, parse_with_overrides, setup_config
from gfl_d2.errors import UsageError
from gfl_d2.predictor import LazyPredictor, dataset_metadata, list_images


def parse_args(argv=None):
    p = config_argument_parser(__doc__)
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders of images")
    p.add_argument("--output", required=True, help="folder for the drawn images")
    p.add_argument("--confidence-threshold", type=float, default=0.3)
    return parse_with_overrides(p, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_config(args)
    logger = logging.getLogger("detectron2")
    predictor = LazyPredictor(cfg)
    metadata = dataset_metadata(cfg)
    os.makedirs(args.output, exist_ok=True)
    for path in list_images(args.input):
        image = read_image(path, format=predictor.input_format)
        instances = predictor(image)
        instances = instances[instances.scores >= args.confidence_threshold]
        rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
        vis = Visualizer(rgb, metadata, scale=max(1.0, 512 / max(rgb.shape[:2])))
        drawn = vis.draw_instance_predictions(instances).get_image()
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(drawn).save(out_path)
        logger.info(f"{path}: {len(instances)} detections -> {out_path}")


if __name__ == "__main__":
    try:
        main()
    except (UsageError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
