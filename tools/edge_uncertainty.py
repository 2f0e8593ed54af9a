#!/usr/bin/env python
"""
Does the predicted edge uncertainty (``pred_box_std``) know which edges are
ambiguous? On a dataset whose annotations carry ``edge_flags`` (the generated
shapes dataset records, for every edge, whether it was blurred/faded and
whether it is occluded), match each ground-truth box to its best detection
(same class, IoU >= 0.5) and compare the standard deviation of blurred or
occluded edges with that of sharp, free edges.

    python tools/edge_uncertainty.py --name edge_uncertainty_shapes \\
        train.init_checkpoint=output/gfl_R_18_FPN_shapes/model_final.pth
    python tools/edge_uncertainty.py --report --name edge_uncertainty_shapes   # the .md again

Writes the report: ``<results>/<name>.json`` (the summary per group of
edges) and ``<name>.md`` (its table, also printed). The relative std (std /
box side along the edge's axis) controls for object size.
"""

from pycocotools.coco import COCO

from gfl_d2.cli import config_argument_parser, parse_with_overrides, setup_config
from gfl_d2.predictor import LazyPredictor, dataset_metadata
from gfl_studies.edge_uncertainty import edge_uncertainty_rows, render, summarize_edge_uncertainty
from gfl_studies.reports import add_report_arguments, machine, render_again, write_report


def parse_args(argv=None):
    p = config_argument_parser(__doc__)
    p.add_argument("--max-images", type=int, default=0, help="0: the whole test set")
    p.add_argument("--min-iou", type=float, default=0.5)
    add_report_arguments(p, "edge_uncertainty")
    return parse_with_overrides(p, argv)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return None
    cfg = setup_config(args)
    predictor = LazyPredictor(cfg)
    meta = dataset_metadata(cfg)
    coco = COCO(meta.json_file)
    rows = edge_uncertainty_rows(predictor, coco, meta.image_root, args.max_images, args.min_iou)
    if len(rows) == 0:
        raise SystemExit("no ground-truth box was matched by a detection: is the model trained?")
    summary = summarize_edge_uncertainty(rows)
    setup = dict(
        machine(cfg.train.get("device", "cpu")),
        config=args.config_file,
        weights=cfg.train.init_checkpoint,
        min_iou=args.min_iou,
        max_images=args.max_images,
    )
    print(write_report(args.results, args.name, dict(setup=setup, summary=summary), render))
    return summary


if __name__ == "__main__":
    main()
