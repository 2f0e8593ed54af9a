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
import argparse
import logging
import os

from PIL import Image

from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

import gfl_d2  # noqa: F401,E402
from gfl_d2.engine import DEFAULT_CONFIG, load_lazy_config
from gfl_d2.predictor import LazyPredictor, dataset_metadata, list_images



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders of images")
    p.add_argument("--output", required=True, help="folder for the drawn images")
    p.add_argument("--confidence-threshold", type=float, default=0.3)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="detectron2")
    logger = logging.getLogger("detectron2")
    cfg = load_lazy_config(args.config_file, args.opts)
    if not cfg.train.init_checkpoint:
        raise SystemExit("no weights: pass train.init_checkpoint=/path/to/model.pth")
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
    main()
