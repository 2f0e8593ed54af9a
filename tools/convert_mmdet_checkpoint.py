#!/usr/bin/env python
"""
Convert a GFL checkpoint in MMDetection's format (MMDetection v2/v3 model zoo,
the authors' release) into a checkpoint that ``DetectionCheckpointer`` loads
into the matching config under ``configs/COCO-Detection/``.

    python tools/convert_mmdet_checkpoint.py gfl_r50_fpn_1x_coco.pth gfl_R_50_FPN_1x_converted.pth
    python tools/train_net.py --config-file configs/COCO-Detection/gfl_R_50_FPN_1x.py --eval-only \
        train.init_checkpoint=gfl_R_50_FPN_1x_converted.pth

Prints what it mapped. Refuses, with the reason, a checkpoint it does not
understand (DCN backbones, other architectures) and never leaves a
half-written output file.
"""
import argparse
import logging
import os
import sys
import tempfile

import torch

from gfl_d2.convert import ConversionError, convert_mmdet_state_dict, load_mmdet_checkpoint


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="MMDetection GFL checkpoint (.pth)")
    p.add_argument("dst", help="output checkpoint for gfl-d2 (.pth)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every mapped key")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a checkpoint that pickles Python objects besides its tensors (e.g. mmengine's log history) "
        "by full unpickling, which can run code from the file: only for files from a source you trust",
    )
    args = p.parse_args(argv)
    if args.allow_pickle:
        logging.basicConfig(format="%(levelname)s: %(message)s")
    try:
        state, meta = load_mmdet_checkpoint(args.src, allow_pickle=args.allow_pickle)
        converted, info = convert_mmdet_state_dict(state)
    except ConversionError as e:
        print(f"error: cannot convert {args.src}: {e}", file=sys.stderr)
        return 1

    groups = {}
    for old, new in info["mapping"].items():
        groups.setdefault(old.split(".")[0], []).append((old, new))
    if info["num_groups"] == 1:
        backbone = f"ResNet-{info['depth']}"
    else:
        backbone = f"ResNeXt-{info['depth']} {info['num_groups']}x{info['width_per_group']}d"
    print(
        f"{args.src}: GFL, {backbone} + FPN ({info['fpn_channels']} channels, P3-P7), head of "
        f"{info['num_convs']} convs, {info['num_classes']} classes, reg_max {info['reg_max']}"
    )
    for prefix, pairs in groups.items():
        print(f"  {prefix}: {len(pairs)} tensors, e.g. {pairs[0][0]} -> {pairs[0][1]}")
        if args.verbose:
            for old, new in pairs:
                print(f"    {old} -> {new}")
    reasons = {}
    for key, why in info["dropped"].items():
        reasons.setdefault(why, []).append(key)
    for why, keys in reasons.items():
        print(f"  dropped {keys[0] if len(keys) == 1 else f'{len(keys)} tensors'}: {why}")
    out_dir = os.path.dirname(os.path.abspath(args.dst))
    os.makedirs(out_dir, exist_ok=True)
    # write to a temporary file and rename: never a half-written output
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"model": converted, "__author__": "gfl-d2 convert_mmdet_checkpoint", "mmdet_meta_keys": sorted(meta)}, tmp)
        os.replace(tmp, args.dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {len(converted)} tensors to {args.dst}; use it with configs/{info['config']}"
          + (f" and model.num_classes={info['num_classes']}" if info["num_classes"] != 80 else "")
          + (f" and model.reg_max={info['reg_max']} model.head.box_channels={4 * (info['reg_max'] + 1)}"
             if info["reg_max"] != 16 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
