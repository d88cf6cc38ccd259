#!/usr/bin/env python
"""Train and evaluate AutoFocus models from LazyConfig Python configs, as Detectron2's own
tools/lazyconfig_train_net.py does (same flags, same ``key=value`` overrides), e.g.
    python lazyconfig_train_net.py --config-file configs/Synthetic/autofocus_compact_fpn.py
    python lazyconfig_train_net.py --config-file configs/Synthetic/autofocus_compact_fpn.py \
        --eval-only train.init_checkpoint=output/synth_compact_fpn_lazy/model_final.pth
    python lazyconfig_train_net.py --config-file <cfg.py> --num-gpus 8 train.amp.enabled=True
    python lazyconfig_train_net.py --eval-only train.init_checkpoint=<its model_final.pth>  # config recorded
The plugin's differences: AutoFocus's pixel saving is reported beside COCO AP, AMP on a CPU device
is refused up front, several CPU processes train too (see autofocus_d2.utils.distributed), and
checkpoints are atomic, with weights that must fit unless --finetune (autofocus_d2.checkpoint), and
they carry the model's record (the LazyConfig as yaml text, the class names and count:
autofocus_d2.model_metadata); --eval-only checks train.init_checkpoint's record against the config
(a contradicting model.roi_heads.num_classes is an error naming the key).
"""
import logging
import os

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import autofocus_d2  # noqa: F401  (registers the model, heads and datasets)
from autofocus_d2.checkpoint import AtomicCheckpointer, add_finetune_argument
from autofocus_d2.data import (
    add_register_coco_argument,
    check_evaluable,
    check_num_classes,
    register_coco_datasets,
)
from autofocus_d2.evaluation import AutoFocusEfficiencyEvaluator
from autofocus_d2.model_metadata import (
    check_lazy_config_against_metadata,
    lazy_model_metadata,
    load_recorded_lazy_config,
    read_model_metadata,
)
from autofocus_d2.utils.distributed import check_amp_device, create_ddp_model

logger = logging.getLogger("autofocus_d2")


def do_test(cfg, model):
    """COCO AP (``dataloader.evaluator``) and AutoFocus's pixel saving on ``dataloader.test``."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator = DatasetEvaluators([instantiate(cfg.dataloader.evaluator), AutoFocusEfficiencyEvaluator()])
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    if comm.is_main_process():
        print_csv_format(ret)
    return ret


def do_train(args, cfg):
    """Detectron2's LazyConfig training loop: model, optimizer, SNIPER chip loader, (AMP)trainer
    and hooks from ``cfg``; ``train.*`` as in Detectron2's common/train.py."""
    check_amp_device(cfg.train.amp.enabled, cfg.train.device, key="train.amp.enabled")
    metadata = lazy_model_metadata(cfg)  # before the loop puts the model into cfg.optimizer
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer, metadata=metadata,
                                      allow_mismatch=getattr(args, "finetune", False))
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                                 period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    register_coco_datasets(args.register_coco)  # in every process that launch() starts
    if args.config_file:
        cfg = LazyConfig.load(args.config_file)
    else:  # --eval-only train.init_checkpoint=<weights of this script>: the config they carry
        weights = [o.split("=", 1)[1] for o in args.opts if o.startswith("train.init_checkpoint=")]
        if not (args.eval_only and weights):
            raise SystemExit("--config-file is required (except with --eval-only "
                             "train.init_checkpoint=<weights written by this script>)")
        cfg = load_recorded_lazy_config(weights[-1])
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    # The plugin's own log (the efficiency table, dataset checks), as train_net.py shows it.
    setup_logger(output=cfg.train.output_dir, distributed_rank=comm.get_rank(), name="autofocus_d2")
    weights = cfg.train.init_checkpoint
    if args.eval_only and weights and ("://" in weights or os.path.isfile(weights)):
        record = read_model_metadata(weights)  # the weights' own config and class names, if any
        if record is not None:
            check_lazy_config_against_metadata(cfg, record, weights)
    train_names = cfg.dataloader.train.get("dataset", {}).get("names") if not args.eval_only else None
    if train_names and "roi_heads" in cfg.model:  # own training data: the class count must match
        train_names = [train_names] if isinstance(train_names, str) else list(train_names)
        check_num_classes(cfg.model.roi_heads.num_classes, "model.roi_heads.num_classes", train_names)
    if "evaluator" in cfg.dataloader:  # the test set checked before the model and the first iteration
        names = cfg.dataloader.test.dataset.names
        names = [names] if isinstance(names, str) else list(names)
        if "roi_heads" in cfg.model:
            check_num_classes(cfg.model.roi_heads.num_classes, "model.roi_heads.num_classes", names)
        check_evaluable(names)
        if cfg.dataloader.evaluator.get("output_dir") is None:
            # As train_net.py: the COCO results (coco_instances_results.json) under the output folder.
            cfg.dataloader.evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference", "_".join(names))
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        AtomicCheckpointer(model, allow_mismatch=getattr(args, "finetune", False)).load(
            cfg.train.init_checkpoint
        )
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    args = add_finetune_argument(add_register_coco_argument(default_argument_parser())).parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
