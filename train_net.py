#!/usr/bin/env python
"""Train and evaluate AutoFocus models with Detectron2's DefaultTrainer.

Same flags as Detectron2's tools/train_net.py, e.g.
    python train_net.py --config-file configs/Synthetic/autofocus_compact_fpn.yaml
    python train_net.py --config-file <cfg> --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --eval-only MODEL.WEIGHTS output/model_final.pth   (the config it was trained with)
    python train_net.py --config-file <cfg> --num-gpus 8
    python train_net.py --config-file <cfg> --num-gpus 8 --num-machines 2 --machine-rank 0 \
        --dist-url tcp://<host>:<port>
Several CPU processes (gloo; Detectron2 >= 0.7, whose launch() accepts a machine without CUDA):
    python train_net.py --config-file <cfg> --num-gpus 2 MODEL.DEVICE cpu
"""
import os
import weakref
from typing import List

import autofocus_d2  # noqa: F401,I001  (first: it imports Detectron2 without its known warnings)
import detectron2.utils.comm as comm
import torch
from detectron2.engine import (
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.evaluation import DatasetEvaluators, verify_results
from detectron2.utils.logger import setup_logger

from autofocus_d2.checkpoint import AtomicCheckpointer, add_finetune_argument
from autofocus_d2.config import load_autofocus_config
from autofocus_d2.model_metadata import load_tool_config, model_metadata
from autofocus_d2.data import (
    add_register_coco_argument,
    build_sniper_train_loader,
    check_config_datasets,
    register_coco_datasets,
    warn_dense_scenes,
)
from autofocus_d2.evaluation import (
    AutoFocusEfficiencyEvaluator,
    DetectionCapEvaluator,
    build_coco_evaluator,
    detection_cap,
    evaluation_max_dets,
    score_floor,
)
from autofocus_d2.utils.distributed import check_amp_device, create_ddp_model
from autofocus_d2.utils.quiet_logs import quiet_logs


class Trainer(DefaultTrainer):
    """DefaultTrainer that trains on SNIPER chips when INPUT.SNIPER.ENABLED, whose evaluator
    reports COCO AP and AutoFocus's pixel saving side by side, that also trains on several CPU
    processes (Detectron2's own DDP wrapper refuses CPU models), and whose checkpoints are
    atomic (see autofocus_d2.checkpoint; ``finetune``: load MODEL.WEIGHTS that do not fit)."""

    def __init__(self, cfg, *, finetune: bool = False):
        self.finetune = finetune  # read by build_hooks, which DefaultTrainer.__init__ calls
        check_amp_device(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE)
        if comm.get_world_size() == 1 or torch.device(cfg.MODEL.DEVICE).type == "cuda":
            super().__init__(cfg)
            return
        # Several CPU processes (gloo): DefaultTrainer.__init__'s steps, through the same public
        # builders and hooks, with a DDP wrapper that accepts CPU models.
        TrainerBase.__init__(self)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, metadata=model_metadata(cfg),
                                               trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List:
        # DefaultTrainer.__init__ builds its DetectionCheckpointer just before calling this: the
        # hooks (PeriodicCheckpointer) and resume_or_load get the atomic one instead, which writes
        # the model's record (config, class names) into every checkpoint.
        self.checkpointer = AtomicCheckpointer.like(self.checkpointer, allow_mismatch=self.finetune,
                                                    metadata=model_metadata(self.cfg))
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.INPUT.SNIPER.ENABLED:
            return build_sniper_train_loader(cfg)
        return super().build_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # COCO AP counts up to max(100, TEST.DETECTIONS_PER_IMAGE) detections per image, and images
        # whose predictions reach that cap are reported (evaluation.detection_cap).
        return DatasetEvaluators([
            build_coco_evaluator(dataset_name, output_folder, max_dets=evaluation_max_dets(cfg)),
            AutoFocusEfficiencyEvaluator(),
            DetectionCapEvaluator(detection_cap(cfg), score_floor(cfg)),
        ])


def setup(args):
    """get_cfg -> add_autofocus_config -> merge file and opts -> freeze -> default_setup. With
    --eval-only and no --config-file, the config recorded in MODEL.WEIGHTS (load_tool_config)."""
    if args.eval_only:
        cfg = load_tool_config(args.config_file or None, args.opts)
    else:
        cfg = load_autofocus_config(args.config_file, args.opts)
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="autofocus_d2")
    return cfg


def main(args):
    quiet_logs()  # known third-party warnings, in every process launch() starts
    register_coco_datasets(args.register_coco)  # in every process that launch() starts
    cfg = setup(args)
    check_config_datasets(cfg, train=not args.eval_only)  # before the model and the first iteration
    if comm.is_main_process():
        warn_dense_scenes(cfg, list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)))
    finetune = getattr(args, "finetune", False)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, allow_mismatch=finetune).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg, finetune=finetune)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = add_finetune_argument(add_register_coco_argument(default_argument_parser())).parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
