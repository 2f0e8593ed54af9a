#!/usr/bin/env python
"""
GFL training and evaluation with detectron2's yacs configs and ``DefaultTrainer``,
the way detectron2's ``projects/`` do it.

    python projects/GFL/train_net.py --config-file configs/gfl_R_50_FPN_1x.yaml --num-gpus 8
    python projects/GFL/train_net.py --config-file configs/gfl_R_50_FPN_1x.yaml \
        --eval-only MODEL.WEIGHTS /path/to/model_final.pth
"""
import logging
import os

import detectron2.engine.defaults
import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import COCOEvaluator, verify_results

from gfl_d2 import add_gfl_config  # (also registers GFL)
from gfl_d2.data import register_shapes
from gfl_d2.engine import create_ddp_model, describe_device, resolve_device
from gfl_d2.training import invoke_main

# DefaultTrainer wraps the model with detectron2's create_ddp_model, which passes
# GPU device ids; on CPU (gloo) DDP needs none.
detectron2.engine.defaults.create_ddp_model = create_ddp_model


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)


def setup(args):
    # the generated shapes dataset (tools/train_net.py makes it), if present
    register_shapes()
    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    cfg.freeze()
    default_setup(cfg, args)
    logging.getLogger("detectron2").info(describe_device(cfg.MODEL.DEVICE))
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    invoke_main(main)
