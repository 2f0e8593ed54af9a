#!/usr/bin/env python
"""
Does the predicted edge uncertainty (``pred_box_std``) know which edges are
ambiguous? On a dataset whose annotations carry ``edge_flags`` (the generated
shapes dataset records, for every edge, whether it was blurred/faded and
whether it is occluded), match each ground-truth box to its best detection
(same class, IoU >= 0.5) and compare the standard deviation of blurred or
occluded edges with that of sharp, free edges.

    python tools/measure_edge_uncertainty.py --output uncertainty/ \
        train.init_checkpoint=output/gfl_R_18_FPN_shapes/model_final.pth

Writes ``edge_uncertainty.json`` and prints a Markdown table. The relative std
(std / box side along the edge's axis) controls for object size.
"""
import json
import logging
import os

from pycocotools.coco import COCO


from gfl_d2.analysis import edge_uncertainty_markdown, edge_uncertainty_rows, summarize_edge_uncertainty
from gfl_d2.engine import config_argument_parser, parse_with_overrides, setup_config
from gfl_d2.predictor import LazyPredictor, dataset_metadata

logger = logging.getLogger("detectron2")


def parse_args(argv=None):
    p = config_argument_parser(__doc__)
    p.add_argument("--output", required=True)
    p.add_argument("--max-images", type=int, default=0, help="0: the whole test set")
    p.add_argument("--min-iou", type=float, default=0.5)
    return parse_with_overrides(p, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = setup_config(args)
    predictor = LazyPredictor(cfg)
    meta = dataset_metadata(cfg)
    coco = COCO(meta.json_file)
    rows = edge_uncertainty_rows(predictor, coco, meta.image_root, args.max_images, args.min_iou)
    if len(rows) == 0:
        raise SystemExit("no ground-truth box was matched by a detection: is the model trained?")
    summary = summarize_edge_uncertainty(rows)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "edge_uncertainty.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(edge_uncertainty_markdown(summary))
    return summary


if __name__ == "__main__":
    main()
