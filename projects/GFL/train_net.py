#!/usr/bin/env python
"""
GFL training and evaluation with detectron2's yacs configs and ``DefaultTrainer``,
the way detectron2's ``projects/`` do it. As the LazyConfig entry point
(``tools/train_net.py``), it checks the training data before training, logs
the fit of the bins to it, checks each batch's ground truth, trains a
``MODEL.GFL.LD`` student with its teacher, keeps a weight EMA with
``SOLVER.EMA.ENABLED`` (evaluated, and saved in the checkpoints next to the
trained weights), trains with NanoDet's augmentations with
``INPUT.NANODET.ENABLED``, and refuses ``--eval-only`` with weights that leave
the head untrained (a checkpoint with a weight EMA is evaluated with it).

    python projects/GFL/train_net.py --config-file configs/gfl_R_50_FPN_1x.yaml --num-gpus 8
    python projects/GFL/train_net.py --config-file configs/gfl_R_50_FPN_1x.yaml \
        --eval-only MODEL.WEIGHTS /path/to/model_final.pth
    python projects/GFL/train_net.py --config-file configs/OwnData/gfl_R_50_FPN_finetune.yaml \
        DATASETS.FOLDER.ROOT /path/to/data MODEL.WEIGHTS /path/to/converted_coco_gfl.pth
"""

import logging
import os
import sys
import weakref

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_setup,
    hooks,
)
from detectron2.evaluation import verify_results
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from gfl_d2 import add_gfl_config  # (also registers GFL)
from gfl_d2.bins import log_bin_fit
from gfl_d2.checkpoint import CheckedCheckpointer, box_layer, holds_layer, load_trained_weights
from gfl_d2.config import ema_settings, nanodet_augmentations, use_dataset_folder
from gfl_d2.cpu_inference import for_cpu_inference
from gfl_d2.data import check_dataset_dicts, register_shapes
from gfl_d2.data.ground_truth import CheckedGroundTruth
from gfl_d2.devices import create_ddp_model, describe_device, resolve_device
from gfl_d2.ema import EMA_KEY, build_weight_ema
from gfl_d2.errors import UsageError
from gfl_d2.evaluation import COCOEvaluatorWithCurves, CountIterations
from gfl_d2.lazy_config import refuse_missing_values
from gfl_d2.teacher import distill_from_yacs_config
from gfl_d2.training import invoke_main

# images sampled by the bin check (the LazyConfig path's train.check_bins)
CHECK_BINS = 200

# the config section that holds MODEL.<section>.NUM_CLASSES, by meta-architecture
_NUM_CLASSES_SECTION = {
    "GFL": "GFL",
    "NanoDetPlus": "GFL",
    "RetinaNet": "RETINANET",
    "QFLRetinaNet": "RETINANET",
    "GeneralizedRCNN": "ROI_HEADS",
}


def num_classes(cfg) -> int:
    """The number of classes of the configured meta-architecture."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in _NUM_CLASSES_SECTION:
        raise UsageError(
            f"MODEL.META_ARCHITECTURE {arch!r}: this trainer knows the classes of "
            f"{sorted(_NUM_CLASSES_SECTION)}"
        )
    return cfg.MODEL[_NUM_CLASSES_SECTION[arch]].NUM_CLASSES


class Trainer(DefaultTrainer):
    """
    detectron2's ``DefaultTrainer`` with its parts built here, before the hooks,
    so that the hooks and ``resume_or_load`` share one checkpointer: a
    :class:`CheckedCheckpointer` of the model (the student alone with
    ``MODEL.GFL.LD``: the trainer runs it taught by its teacher), DDP through
    gfl-d2's CPU-capable ``create_ddp_model``; with ``SOLVER.EMA.ENABLED`` a
    weight EMA of the model (:attr:`ema`), which the checkpointer saves and the
    evaluation runs.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        trained = distill_from_yacs_config(cfg, model) or model
        trained = create_ddp_model(trained, broadcast_buffers=False)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(trained, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.ema = build_weight_ema(ema_settings(cfg), model)
        averaged = {EMA_KEY: self.ema.averaged} if self.ema is not None else {}
        self.checkpointer = CheckedCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), **averaged
        )
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        hook_list = super().build_hooks()
        at = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook))
        if self.ema is not None:
            # evaluate the average; update it right after the step, before the checkpoints
            hook_list[at] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate_ema)
            after = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.LRScheduler))
            hook_list.insert(after + 1, self.ema)
            at += 1
        if comm.is_main_process() and self.cfg.TEST.EVAL_PERIOD > 0:
            # after the evaluation: keep the best weights by bbox AP as model_best.pth
            best = hooks.BestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, "bbox/AP")
            hook_list.insert(at + 1, best)
        hook_list.insert(at, CountIterations())  # names the evaluation's pictures by the iterations
        return hook_list

    def _evaluate_ema(self):
        """DefaultTrainer's evaluation (its results kept for verify_results), of the EMA."""
        self._last_eval_results = self.test(self.cfg, self.ema.model)
        return self._last_eval_results

    @classmethod
    def build_train_loader(cls, cfg):
        """
        detectron2's loader over the training data checked first (the fit of the bins
        logged), GFL's batches checked as they enter.
        """
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        dataset = check_dataset_dicts(dataset, num_classes(cfg))
        args = DatasetMapper.from_config(cfg, True)
        if cfg.INPUT.NANODET.ENABLED:  # NanoDet's warp and colour jitter, not the resize and flip
            args["augmentations"] = nanodet_augmentations(cfg)
        mapper = DatasetMapper(**args)
        gfl = _NUM_CLASSES_SECTION.get(cfg.MODEL.META_ARCHITECTURE) == "GFL"  # GFL, NanoDetPlus
        if gfl and comm.is_main_process():
            log_yacs_bin_fit(cfg, dataset, mapper)
        loader = build_detection_train_loader(cfg, dataset=dataset, mapper=mapper)
        return CheckedGroundTruth(loader, num_classes(cfg)) if gfl else loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        # per-class AP and a precision-recall picture per evaluation, next to metrics.json
        return COCOEvaluatorWithCurves(
            dataset_name, output_dir=output_folder, plot_dir=cfg.OUTPUT_DIR, allow_cached_coco=False
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation; on the CPU with TEST.CPU_INFERENCE "frozen", the frozen one."""
        return super().test(cfg, for_cpu_inference(model, cfg.TEST.CPU_INFERENCE), evaluators)


def log_yacs_bin_fit(cfg, dataset, mapper):
    """
    The bin check on a copy of the model built on the CPU (the trainer's own is not built
    yet when the loader is): only its anchors and label assignment run.
    ``MODEL.WEIGHTS`` holding a trained box layer fixes n.
    """
    cpu = cfg.clone()
    cpu.defrost()
    cpu.MODEL.DEVICE = "cpu"
    model = build_model(cpu).eval()
    weights = cfg.MODEL.WEIGHTS
    fixed_by = weights if holds_layer(weights, model, box_layer(model)) else None
    setting = "MODEL.GFL.REG_MAX {n}"
    log_bin_fit(model, dataset, mapper, CHECK_BINS, fixed_by, setting, output_dir=cfg.OUTPUT_DIR)


# what to say when a config's mandatory ("???") value is not given
_MANDATORY_HINTS = {
    "MODEL.WEIGHTS": "the weights to start from: MODEL.WEIGHTS /path/to/model.pth",
    "DATASETS.FOLDER.ROOT": (
        "the folder of your dataset (COCO, Pascal VOC or YOLO layout): "
        "DATASETS.FOLDER.ROOT /path/to/data"
    ),
}


def setup(args):
    # the generated shapes dataset (tools/train_net.py makes it), if present
    register_shapes()
    cfg = get_cfg()
    add_gfl_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    refuse_missing_values(cfg, args.config_file, _MANDATORY_HINTS, "{key} ...")
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE)
    # gfl_d2's own log lines (dataset folder, checks) go where detectron2's go
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gfl_d2")
    use_dataset_folder(cfg)  # DATASETS.FOLDER.ROOT: register it, set DATASETS.* and NUM_CLASSES
    cfg.freeze()
    default_setup(cfg, args)
    logging.getLogger("detectron2").info(describe_device(cfg.MODEL.DEVICE))
    return cfg


def evaluation_weights(cfg, resume: bool) -> str:
    """
    ``--eval-only``'s weights: the run's last checkpoint when resuming with one,
    else MODEL.WEIGHTS.
    """
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.OUTPUT_DIR, f.read().strip())
    return cfg.MODEL.WEIGHTS


def main(args):
    cfg = setup(args)
    if args.eval_only:  # the model alone (an LD config's student)
        model = Trainer.build_model(cfg)
        weights = evaluation_weights(cfg, args.resume)
        load_trained_weights(model, weights, how="MODEL.WEIGHTS /path/to/model_final.pth")
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    try:
        invoke_main(main)
    except UsageError as e:  # a config, weights or data to fix: the message says what
        sys.exit(f"error: {e}")
