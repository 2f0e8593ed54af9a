#!/usr/bin/env python
"""
Train and evaluate GFL (or any detectron2 LazyConfig model) with detectron2's
trainers, hooks, checkpointer and evaluators, in the manner of detectron2's
``tools/lazyconfig_train_net.py``.

    python tools/train_net.py --config-file configs/COCO-Detection/gfl_R_50_FPN_1x.py --num-gpus 8
    python tools/train_net.py --config-file ... --eval-only train.init_checkpoint=/path/model.pth
    python tools/train_net.py --config-file ... --resume      # continue from output_dir

Multi-node: add ``--num-machines N --machine-rank R --dist-url tcp://HOST:PORT``.
Without a GPU the model runs on the CPU (``--num-gpus K`` then starts K CPU
processes that communicate with gloo).
"""

import sys

from gfl_d2.errors import UsageError
from gfl_d2.training import invoke_main

if __name__ == "__main__":
    try:
        invoke_main()
    except UsageError as e:  # a config, weights or data to fix: the message says what
        sys.exit(f"error: {e}")
