"""The small config trains (loss goes down) and train_net.py --eval-only runs end to end."""
import json
import os
import subprocess
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import autofocus_d2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/Synthetic/autofocus_compact_fpn.yaml")
sys.path.insert(0, REPO)
import train_net  # noqa: E402


def tiny_cfg(output_dir):
    cfg = get_cfg()
    autofocus_d2.add_autofocus_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([
        "DATASETS.TRAIN", ("autofocus_synth_tiny",), "DATASETS.TEST", ("autofocus_synth_tiny",),
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 24,
        "SOLVER.WARMUP_ITERS", 4, "SOLVER.BASE_LR", 0.01, "SOLVER.STEPS", (),
        "SOLVER.CHECKPOINT_PERIOD", 1000, "OUTPUT_DIR", str(output_dir), "SEED", 7,
    ])
    return cfg


def test_a_few_training_iterations_on_sniper_chips_lower_the_total_loss(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cfg.DATASETS.TEST = ()  # evaluation is tested below
    assert cfg.INPUT.SNIPER.ENABLED
    # train_net's loader is Detectron2's, fed with SNIPER chips of both training scales.
    batch = next(iter(train_net.Trainer.build_train_loader(cfg)))
    assert len(batch) == 2
    for x in batch:
        assert x["sniper_scale"] in (0, 1) and max(x["image"].shape[-2:]) <= cfg.INPUT.SNIPER.CHIP_SIZE
        assert x["instances"].has("gt_ignore")
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    history = trainer.storage.history("total_loss").values()
    focus = trainer.storage.history("loss_focus").values()
    losses = [v for v, _ in history]
    assert len(losses) == 24 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert focus[-1][0] < focus[0][0]


def test_train_net_eval_only_end_to_end(tmp_path):
    cfg = tiny_cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random_init")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG, "--eval-only",
         "MODEL.WEIGHTS", str(tmp_path / "random_init.pth"), "DATASETS.TEST", '("autofocus_synth_tiny",)',
         "OUTPUT_DIR", str(tmp_path / "eval"), "DATALOADER.NUM_WORKERS", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Evaluation results for bbox" in log
    assert "AutoFocus efficiency over 6 images" in log  # AP and the pixel saving side by side
    preds = tmp_path / "eval" / "inference" / "autofocus_synth_tiny" / "coco_instances_results.json"
    results = json.loads(preds.read_text())
    assert results and {"image_id", "bbox", "score", "category_id"} <= set(results[0])
