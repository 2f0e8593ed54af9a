#!/usr/bin/env python
"""
Time COCO evaluation's fast path (gfl_d2.evaluation.fast_cocoeval: detectron2's
compiled COCOeval_opt where built, otherwise faster-coco-eval's COCOeval)
against pycocotools' COCOeval on a synthetic set of COCO val2017's size
(gfl_studies.coco_eval_speed), check that their summary numbers agree, and
write the report ``<results>/<name>.json`` and ``.md``. pycocotools takes
minutes on a few cores.

    python tools/coco_eval_speed.py --name coco_eval_speed_cpu_2cores
    python tools/coco_eval_speed.py --report --name coco_eval_speed_cpu_2cores   # the .md again

Exits with status 1 if the two implementations' summary numbers disagree.
"""

import argparse
import sys

from gfl_studies.coco_eval_speed import agree, measure, render
from gfl_studies.reports import add_report_arguments, render_again, write_report


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=5000, help="images in the synthetic set")
    p.add_argument("--repeats", type=int, default=1, help="runs of each implementation")
    p.add_argument("--seed", type=int, default=0)
    add_report_arguments(p, "coco_eval_speed")
    args = p.parse_args(argv)
    if args.report:
        print(render_again(args.results, args.name, render))
        return 0
    data = measure(num_images=args.images, repeats=args.repeats, seed=args.seed)
    print(write_report(args.results, args.name, data, render))
    return 0 if agree(data) else 1


if __name__ == "__main__":
    sys.exit(main())
