#!/usr/bin/env python
"""
Convert a GFL checkpoint in MMDetection's format (MMDetection v2/v3 model zoo
with its DCN and LD rows; GFL V2 from the authors' GFocalV2 release, Res2Net
included) into a checkpoint that ``DetectionCheckpointer`` loads into the
matching config under ``configs/COCO-Detection/`` (the tool names it, with any
overrides it needs); an ImageNet backbone into a ``train.init_checkpoint``; a
NanoDet-Plus checkpoint (NanoDet's Lightning ``.ckpt``, whose EMA weights it
takes, or its ``.pth``) into ``configs/COCO-Detection/NanoDet/``.

    python tools/convert_mmdet_checkpoint.py \
        gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth pretrained/gfl_R_50_FPN_1x_coco.pth
    python tools/train_net.py --config-file configs/COCO-Detection/gfl_R_50_FPN_1x.py --eval-only \
        train.init_checkpoint=pretrained/gfl_R_50_FPN_1x_coco.pth

Prints what it mapped. Refuses, with the reason, a checkpoint it does not
understand (other architectures, the authors' MMDetection 1.1 fork) and never leaves a
half-written output file.
"""

import argparse
import logging
import sys

from gfl_d2.convert import ConversionError, convert_checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("src", help="MMDetection GFL checkpoint (.pth)")
    p.add_argument("dst", help="output checkpoint for gfl-d2 (.pth)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every mapped key")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a checkpoint that pickles Python objects besides its tensors (e.g. "
        "mmengine's log history) by full unpickling, which can run code from the file: only "
        "for files from a source you trust",
    )
    args = p.parse_args(argv)
    if args.allow_pickle:
        logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        report = convert_checkpoint(
            args.src, args.dst, allow_pickle=args.allow_pickle, verbose=args.verbose
        )
    except ConversionError as e:
        print(f"error: cannot convert {args.src}: {e}", file=sys.stderr)
        return 1
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
