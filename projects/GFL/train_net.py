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
import weakref

import detectron2.engine.defaults
import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from gfl_d2 import add_gfl_config  # (also registers GFL)
from gfl_d2.config import use_dataset_folder
from gfl_d2.data import DatasetError, register_shapes
from gfl_d2.engine import CheckedCheckpointer, create_ddp_model, describe_device, resolve_device
from gfl_d2.evaluation import COCOEvaluatorWithCurves, CountIterations
from gfl_d2.training import invoke_main

# DefaultTrainer wraps the model with detectron2's create_ddp_model, which passes
# GPU device ids; on CPU (gloo) DDP needs none.
detectron2.engine.defaults.create_ddp_model = create_ddp_model


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        # names the tensors a fine-tuning checkpoint does not fit (another number of classes)
        self.checkpointer = CheckedCheckpointer(self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))

    def build_hooks(self):
        hook_list = super().build_hooks()
        at = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook))
        if comm.is_main_process() and self.cfg.TEST.EVAL_PERIOD > 0:
            # after the evaluation: keep the best weights by bbox AP as model_best.pth
            hook_list.insert(at + 1, hooks.BestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, "bbox/AP"))
        hook_list.insert(at, CountIterations())  # names the evaluation's pictures by the iterations done
        return hook_list

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        # per-class AP and a precision-recall picture per evaluation, next to metrics.json
        return COCOEvaluatorWithCurves(
            dataset_name, output_dir=output_folder, plot_dir=cfg.OUTPUT_DIR, allow_cached_coco=False
        )


def setup(args):
    # the generated shapes dataset (tools/train_net.py makes it), if present
    register_shapes()
    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    # gfl_d2's own log lines (dataset folder, checks) go where detectron2's go
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gfl_d2")
    try:
        use_dataset_folder(cfg)  # DATASETS.FOLDER.ROOT: register it, set DATASETS.* and NUM_CLASSES
    except DatasetError as e:
        raise SystemExit(f"error: {e}")
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
