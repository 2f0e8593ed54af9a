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
import logging

import torch

from detectron2.config import instantiate
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm

from gfl_d2.engine import (
    DEFAULT_CONFIG,
    CheckedCheckpointer,
    create_ddp_model,
    describe_device,
    load_lazy_config,
    resolve_device,
)
from gfl_d2.training import do_test, do_train

logger = logging.getLogger("detectron2")


def setup(args):
    # with no --config-file: the embedded dataset and a small GFL that trains on a CPU
    args.config_file = args.config_file or DEFAULT_CONFIG
    cfg = load_lazy_config(args.config_file, args.opts)
    cfg.train.device = resolve_device(cfg.train.get("device", "cuda"))
    default_setup(cfg, args)
    logger.info(describe_device(cfg.train.device))
    return cfg


def main(args):
    result = run(args)
    if comm.get_world_size() > 1:
        # leave together and close the process group, so that no gloo/NCCL thread is torn down mid-use
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return result


def run(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.train.init_checkpoint:
            raise SystemExit("error: --eval-only needs weights: train.init_checkpoint=/path/to/model.pth")
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        CheckedCheckpointer(model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(cfg, resume=args.resume)
    # final evaluation results are printed by the EvalHook after the last iteration


def invoke_main():
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
