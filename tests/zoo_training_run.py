"""A fake training run of the compact config, as DefaultTrainer leaves it, for the model-zoo
tests (the ``released`` fixture of conftest.py releases it; the zoo tests evaluate models with
:func:`evaluate`)."""
import json
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.modeling import build_model

from autofocus_d2 import model_zoo
from autofocus_d2.data import ensure_split
from autofocus_d2.evaluation import AutoFocusEfficiencyEvaluator, build_coco_evaluator

NAME = "Synthetic/autofocus_compact_fpn.yaml"
DATASET = "autofocus_synth_tiny"
SPEED_LINE = ("[11/23 07:19:01 d2.evaluation.evaluator]: Total inference pure compute time: "
              "0:00:01 (0.250000 s / iter per device, on 1 devices)\n")


def evaluate(model):
    """AP and AutoFocus efficiency of ``model`` on the tiny split, as train_net.py evaluates."""
    cfg = model_zoo.get_config(NAME)
    ensure_split(DATASET)
    loader = build_detection_test_loader(cfg, DATASET, num_workers=0)
    evaluator = DatasetEvaluators([build_coco_evaluator(DATASET), AutoFocusEfficiencyEvaluator()])
    model.eval()
    return inference_on_dataset(model, loader, evaluator)


def same_results(a, b):
    """Equal evaluation results, NaN (the AP of a class absent from the split) equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def make_training_dir(path, seed=0):
    """What DefaultTrainer leaves in OUTPUT_DIR: model_final.pth (with optimizer, scheduler and
    iteration), config.yaml, metrics.json with the final evaluation, and log.txt."""
    os.makedirs(path, exist_ok=True)
    cfg = model_zoo.get_config(NAME)
    cfg.OUTPUT_DIR = str(path)
    cfg.DATASETS.TEST = (DATASET,)
    torch.manual_seed(seed)
    model = build_model(cfg)
    # Like a trained head, mark few cells as FocusPixels: scale 1 then runs on FocusChips.
    torch.nn.init.constant_(model.focus_head.predictor.bias, 0.0)
    model.focus_head.predictor.bias.data += torch.tensor([2.0, -2.0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # fills the momentum buffers; zero gradients leave the weights as they are
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=400)
    DetectionCheckpointer(model, str(path), optimizer=optimizer, scheduler=scheduler).save(
        "model_final", iteration=cfg.SOLVER.MAX_ITER - 1)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    results = evaluate(model)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 498, "total_loss": 1.5, "lr": 0.005}) + "\n")
        f.write(json.dumps({"iteration": 499, **flatten_results_dict(results)}) + "\n")
    with open(os.path.join(path, "log.txt"), "w") as f:
        f.write(SPEED_LINE)
    return model, results
