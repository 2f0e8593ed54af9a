#!/usr/bin/env python
"""
Write the generated "bars" dataset (gfl_studies.bars: non-square images of
varying size, classes bar / ellipse / cross / frame with ids 3, 7, 11, 20,
some images without objects) as a dataset folder in COCO, Pascal VOC or YOLO
layout: something to try configs/OwnData on.

    python tools/make_bars_dataset.py --layout voc --output datasets/bars_voc
    python tools/train_net.py --config-file configs/OwnData/gfl_R_18_FPN_scratch.py \\
        dataset.root=datasets/bars_voc
"""

import argparse

from gfl_d2.data import LAYOUTS
from gfl_studies.bars import write_bars_dataset


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layout", required=True, choices=LAYOUTS)
    p.add_argument("--output", required=True, help="the dataset folder to write")
    p.add_argument("--num-train", type=int, default=1500)
    p.add_argument("--num-val", type=int, default=300)
    p.add_argument("--seed", type=int, default=0, help="the train split's seed (val: seed + 1)")
    args = p.parse_args(argv)
    splits = (("train", args.num_train, args.seed), ("val", args.num_val, args.seed + 1))
    written = write_bars_dataset(args.output, args.layout, splits=splits)
    for split, records in written.items():
        boxes = sum(len(r["annotations"]) for r in records)
        print(
            f"{args.output}: {split}, {len(records)} images, {boxes} objects ({args.layout} layout)"
        )


if __name__ == "__main__":
    main()
