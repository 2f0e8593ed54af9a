"""
The LazyConfig entry point, in the manner of detectron2's
``tools/lazyconfig_train_net.py``: training and evaluation loops, with the
training data checked before training starts (and each batch's ground truth
as it enters, for GFL), the fit of GFL's bins to it logged, and a config's
``distillation`` teacher wrapped around the model for training only.
``train.ema`` keeps a weight EMA (:mod:`gfl_d2.ema`), which the evaluation
uses and the checkpoints hold. ``--eval-only`` loads weights by the one
policy of :func:`gfl_d2.checkpoint.load_trained_weights`. ``tools/train_net.py`` runs
:func:`invoke_main`; errors in what was asked are raised as
:class:`gfl_d2.errors.UsageError` for it to print.
"""

import logging
import os

import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup, default_writers, hooks, launch
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig

from .bins import log_bin_fit
from .checkpoint import CheckedCheckpointer, box_layer, holds_layer, load_trained_weights
from .cpu_inference import for_cpu_inference
from .data import check_dataset_dicts
from .data.ground_truth import CheckedGroundTruth
from .devices import create_ddp_model, describe_device, resolve_device
from .ema import EMA_KEY, build_weight_ema
from .errors import UsageError
from .evaluation import CountIterations, use_fast_cocoeval
from .lazy_config import load_lazy_config, prepare_datasets, resolve_num_classes
from .model_zoo import DEFAULT_CONFIG
from .modeling import GFL
from .teacher import distill_from_lazy_config
from .train_loop import AMPTrainer, SimpleTrainer, clip_gradients

__all__ = [
    "do_test",
    "do_train",
    "build_train_loader",
    "dataset_names",
    "starting_weights",
    "setup",
    "main",
    "invoke_main",
]

logger = logging.getLogger("detectron2")


def do_test(cfg, model):
    """
    Evaluate ``model`` on ``dataloader.test`` (on the CPU through the frozen
    backend with ``train.cpu_inference="frozen"``); ``dataloader.evaluator=None``:
    train only (tools/ablation.py evaluates separately). A ``COCOEvaluator``
    evaluates with the fast path of :func:`gfl_d2.evaluation.use_fast_cocoeval`.
    """
    if cfg.dataloader.get("evaluator") is None:
        return {}
    use_fast_cocoeval()
    model = for_cpu_inference(model, cfg.train.get("cpu_inference", "eager"))
    ret = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(ret)
    return ret


def dataset_names(dataset_cfg):
    """The registered dataset names a dataset config refers to, where they are plain strings."""
    names = dataset_cfg.get("names") if isinstance(dataset_cfg, DictConfig) else None
    if isinstance(names, str):
        return [names]
    return [n for n in names if isinstance(n, str)] if isinstance(names, ListConfig) else []


def build_train_loader(cfg, model=None, weights: str = ""):
    """
    The training loader, with its dataset checked before training starts and,
    given a model with edge distributions, the fit of its bins to the data's
    regression targets logged (``train.check_bins``: images sampled, 0 = off).
    ``weights``: the checkpoint the run starts from; if it holds a trained box
    layer for this model, n is fixed by it and the bin check says so instead
    of advising another n.
    """
    loader_cfg = cfg.dataloader.train
    names = dataset_names(loader_cfg.dataset) if "dataset" in loader_cfg else []
    try:
        if "dataset" not in loader_cfg:
            return instantiate(loader_cfg)
        num_classes = cfg.model.get("num_classes", None)
        dataset = check_dataset_dicts(
            instantiate(loader_cfg.dataset), num_classes if isinstance(num_classes, int) else None
        )
        kwargs = {
            k: instantiate(loader_cfg[k]) for k in loader_cfg if k not in ("_target_", "dataset")
        }
        sample = cfg.train.get("check_bins", 200)
        # the bins of a model with edge distributions (not FCOS, RetinaNet, ...)
        checks_bins = kwargs.get("mapper") is not None and getattr(
            getattr(model, "box2box_transform", None), "has_distributions", False
        )
        if sample and checks_bins and comm.is_main_process():
            fixed_by = weights if holds_layer(weights, model, box_layer(model)) else None
            output_dir = cfg.train.output_dir
            log_bin_fit(model, dataset, kwargs["mapper"], sample, fixed_by, output_dir=output_dir)
        target = loader_cfg._target_
        loader = (locate(target) if isinstance(target, str) else target)(dataset=dataset, **kwargs)
        # GFL's batches are checked as they enter (class ids, non-finite and empty boxes)
        return CheckedGroundTruth(loader, model.num_classes) if isinstance(model, GFL) else loader
    except UsageError:
        raise
    except Exception as e:
        files = [
            MetadataCatalog.get(n).get("json_file", None)
            for n in names
            if n in MetadataCatalog.list()
        ]
        where = (
            f" {names}" + (f" (annotations: {[f for f in files if f]})" if any(files) else "")
            if names
            else ""
        )
        raise RuntimeError(
            f"Could not build the training data{where}: {type(e).__name__}: {e}"
        ) from e


def starting_weights(cfg, resume: bool) -> str:
    """
    The checkpoint a run loads: its own last one when resuming with one, else
    ``train.init_checkpoint``.
    """
    last = os.path.join(cfg.train.output_dir, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.train.output_dir, f.read().strip())
    return cfg.train.init_checkpoint


def build_optimizer(cfg, model):
    """``cfg.optimizer`` over ``model``'s parameters, with ``train.clip_grad`` if enabled."""
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    clip = cfg.train.get("clip_grad", None)
    if clip is not None and clip.get("enabled", False):
        clip_gradients(
            optim,
            clip.get("clip_type", "norm"),
            clip.get("clip_value", 35.0),
            clip.get("norm_type", 2.0),
        )
    return optim


def build_hooks(cfg, trainer, checkpointer, model, ema=None):
    """
    detectron2's hooks of a LazyConfig run; ``model`` is what the evaluation runs,
    unless a weight EMA (:class:`gfl_d2.ema.WeightEMA`) is given: then its average,
    updated before the checkpoints and the evaluation see the step.
    """
    main_process = comm.is_main_process()
    evaluates = cfg.train.eval_period > 0 and cfg.dataloader.get("evaluator") is not None
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter)
    evaluated = ema.model if ema is not None else model
    return [
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        ema,
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if main_process
        else None,
        CountIterations(),  # names the evaluation's pictures by the iterations done
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, evaluated)),
        # evaluating periodically: keep the best weights by bbox AP as model_best.pth
        hooks.BestCheckpointer(cfg.train.eval_period, checkpointer, "bbox/AP", mode="max")
        if main_process and evaluates
        else None,
        hooks.PeriodicWriter(writers, period=cfg.train.log_period) if main_process else None,
    ]


def do_train(cfg, resume: bool = False):
    """
    Train ``cfg.model``; with a ``distillation`` node, the trainer runs the model
    taught by its teacher (:func:`gfl_d2.teacher.distill_from_lazy_config`), while
    the optimizer, the checkpoints and the evaluation see the model alone. With
    ``train.ema.enabled`` the evaluation runs the model's weight EMA, and the
    checkpoints hold it next to the trained weights.
    """
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)
    optim = build_optimizer(cfg, model)
    train_loader = build_train_loader(cfg, model, starting_weights(cfg, resume))
    trained = distill_from_lazy_config(cfg, model) or model
    trained = create_ddp_model(trained, **cfg.train.ddp)
    if cfg.train.amp.enabled:
        # train.amp.precision: "float16" (default) or "bfloat16"; the GFL losses compute in fp32
        precision = getattr(torch, cfg.train.amp.get("precision", "float16"))
        trainer = AMPTrainer(trained, train_loader, optim, precision=precision)
    else:
        trainer = SimpleTrainer(trained, train_loader, optim)
    ema = build_weight_ema(cfg.train.get("ema", None), model)
    checkpointables = {EMA_KEY: ema.averaged} if ema is not None else {}
    checkpointer = CheckedCheckpointer(
        model, cfg.train.output_dir, trainer=trainer, **checkpointables
    )
    trainer.register_hooks(build_hooks(cfg, trainer, checkpointer, model, ema))
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # the checkpoint stores the iteration that just finished
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def setup(args):
    # with no --config-file: the embedded dataset and a small GFL that trains on a CPU
    args.config_file = args.config_file or DEFAULT_CONFIG
    cfg = load_lazy_config(args.config_file, args.opts, resolve=False)
    cfg.train.device = resolve_device(cfg.train.get("device", "cuda"))
    # gfl_d2's own log lines (dataset checks, bins) go where detectron2's go
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="gfl_d2")
    default_setup(cfg, args)
    logger.info(describe_device(cfg.train.device))
    prepare_datasets(cfg)
    resolve_num_classes(cfg)
    return cfg


def main(args):
    result = run(args)
    if comm.get_world_size() > 1:
        # leave together and close the process group: no gloo/NCCL thread is torn down mid-use
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return result


def run(args):
    cfg = setup(args)
    if args.eval_only:  # the model alone (a distillation config's student)
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        load_trained_weights(model, cfg.train.init_checkpoint)
        return do_test(cfg, create_ddp_model(model))
    do_train(cfg, resume=args.resume)
    # final evaluation results are printed by the EvalHook after the last iteration


def invoke_main(main_func=None):
    """
    Parse detectron2's default arguments and ``launch`` ``main_func`` (default
    :func:`main`) on every worker.
    """
    args = default_argument_parser().parse_args()
    launch(
        main_func or main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
