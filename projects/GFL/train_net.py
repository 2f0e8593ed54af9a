#!/usr/bin/env python
"""
GFL training and evaluation with detectron2's yacs configs and ``DefaultTrainer``,
the way detectron2's ``projects/`` do it. As the LazyConfig entry point
(``tools/train_net.py``), it checks the training data before training, logs
the fit of the bins to it, and refuses ``--eval-only`` with weights that
leave the head untrained.

    python projects/GFL/train_net.py --config-file configs/gfl_R_50_FPN_1x.yaml --num-gpus 8
    python projects/GFL/train_net.py --config-file configs/gfl_R_50_FPN_1x.yaml \
        --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python projects/GFL/train_net.py --config-file configs/OwnData/gfl_R_50_FPN_finetune.yaml \
        DATASETS.FOLDER.ROOT /path/to/data MODEL.WEIGHTS /path/to/converted_coco_gfl.pth
"""

import logging
import os
import weakref

import detectron2.engine.defaults
import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from gfl_d2 import add_gfl_config  # (also registers GFL)
from gfl_d2.bins import log_bin_fit
from gfl_d2.checkpoint import (
    CheckedCheckpointer,
    holds_layer,
    refuse_untrained_evaluation,
    require_trained_head,
)
from gfl_d2.config import use_dataset_folder
from gfl_d2.data import DatasetError, check_dataset_dicts, register_shapes
from gfl_d2.devices import create_ddp_model, describe_device, resolve_device
from gfl_d2.evaluation import COCOEvaluatorWithCurves, CountIterations
from gfl_d2.lazy_config import refuse_missing_values
from gfl_d2.training import BOX_LAYER, invoke_main

# images sampled by the bin check (the LazyConfig path's train.check_bins)
CHECK_BINS = 200

# DefaultTrainer wraps the model with detectron2's create_ddp_model, which passes
# GPU device ids; on CPU (gloo) DDP needs none.
detectron2.engine.defaults.create_ddp_model = create_ddp_model


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        # names the tensors a fine-tuning checkpoint does not fit (another number of classes)
        self.checkpointer = CheckedCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )

    def build_hooks(self):
        hook_list = super().build_hooks()
        at = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook))
        if comm.is_main_process() and self.cfg.TEST.EVAL_PERIOD > 0:
            # after the evaluation: keep the best weights by bbox AP as model_best.pth
            hook_list.insert(
                at + 1,
                hooks.BestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, "bbox/AP"),
            )
        hook_list.insert(
            at, CountIterations()
        )  # names the evaluation's pictures by the iterations done
        return hook_list

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's loader, over the training data checked first, and the fit of the bins to that data logged."""
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            proposal_files=None,
        )
        arch = cfg.MODEL.META_ARCHITECTURE
        num_classes = (
            cfg.MODEL.GFL.NUM_CLASSES if arch == "GFL" else cfg.MODEL.RETINANET.NUM_CLASSES
        )
        try:
            dataset = check_dataset_dicts(dataset, num_classes)
        except DatasetError as e:
            raise SystemExit(f"error: {e}")
        mapper = DatasetMapper(cfg, True)
        if arch == "GFL" and comm.is_main_process():
            log_yacs_bin_fit(cfg, dataset, mapper)
        return build_detection_train_loader(cfg, dataset=dataset, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        # per-class AP and a precision-recall picture per evaluation, next to metrics.json
        return COCOEvaluatorWithCurves(
            dataset_name, output_dir=output_folder, plot_dir=cfg.OUTPUT_DIR, allow_cached_coco=False
        )


def log_yacs_bin_fit(cfg, dataset, mapper):
    """
    The bin check on a copy of the model built on the CPU (the trainer's own is not built yet when the
    loader is): only its anchors and label assignment run. ``MODEL.WEIGHTS`` holding a trained box layer
    fixes n.
    """
    cpu = cfg.clone()
    cpu.defrost()
    cpu.MODEL.DEVICE = "cpu"
    model = build_model(cpu).eval()
    fixed_by = cfg.MODEL.WEIGHTS if holds_layer(cfg.MODEL.WEIGHTS, model, BOX_LAYER) else None
    log_bin_fit(model, dataset, mapper, CHECK_BINS, fixed_by, setting="MODEL.GFL.REG_MAX {n}")


# what to say when a config's mandatory ("???") value is not given
_MANDATORY_HINTS = {
    "MODEL.WEIGHTS": "the weights to start from: MODEL.WEIGHTS /path/to/model.pth",
    "DATASETS.FOLDER.ROOT": "the folder of your dataset (COCO, Pascal VOC or YOLO layout): DATASETS.FOLDER.ROOT /path/to/data",
}


def setup(args):
    # the generated shapes dataset (tools/train_net.py makes it), if present
    register_shapes()
    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    refuse_missing_values(cfg, args.config_file, _MANDATORY_HINTS, "{key} ...")
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if args.eval_only and not resuming:
        given = any(str(k) == "MODEL.WEIGHTS" for k in args.opts[::2])
        refuse_untrained_evaluation(cfg.MODEL.WEIGHTS, given, "MODEL.WEIGHTS ")
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
        checkpointer = CheckedCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        loaded = (
            checkpointer.get_checkpoint_file()
            if args.resume and checkpointer.has_checkpoint()
            else cfg.MODEL.WEIGHTS
        )
        require_trained_head(checkpointer, loaded, how="MODEL.WEIGHTS /path/to/model_final.pth")
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    invoke_main(main)
