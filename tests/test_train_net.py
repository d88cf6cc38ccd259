"""The small config trains (loss goes down) and train_net.py --eval-only runs end to end."""
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import train_net
from autofocus_d2.checkpoint import WeightsMismatchError
from autofocus_d2.model_zoo import get_config_file

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")


def tiny_cfg(compact_cfg, output_dir):
    cfg = compact_cfg()
    cfg.merge_from_list([
        "DATASETS.TRAIN", ("autofocus_synth_tiny",), "DATASETS.TEST", ("autofocus_synth_tiny",),
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 24,
        "SOLVER.WARMUP_ITERS", 4, "SOLVER.BASE_LR", 0.01, "SOLVER.STEPS", (),
        "SOLVER.CHECKPOINT_PERIOD", 1000, "OUTPUT_DIR", str(output_dir), "SEED", 7,
    ])
    return cfg


@pytest.mark.slow
def test_a_few_training_iterations_on_sniper_chips_lower_the_total_loss(compact_cfg, tmp_path):
    cfg = tiny_cfg(compact_cfg, tmp_path)
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


@pytest.mark.slow
def test_train_net_eval_only_end_to_end(compact_cfg, repo_root, tmp_path):
    cfg = tiny_cfg(compact_cfg, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random_init")
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "train_net.py"), "--config-file", CONFIG, "--eval-only",
         "MODEL.WEIGHTS", str(tmp_path / "random_init.pth"), "DATASETS.TEST", '("autofocus_synth_tiny",)',
         "OUTPUT_DIR", str(tmp_path / "eval"), "DATALOADER.NUM_WORKERS", "0"],
        capture_output=True, text=True, cwd=repo_root, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Evaluation results for bbox" in log
    assert "AutoFocus efficiency over 6 images" in log  # AP and the pixel saving side by side
    preds = tmp_path / "eval" / "inference" / "autofocus_synth_tiny" / "coco_instances_results.json"
    results = json.loads(preds.read_text())
    assert results and {"image_id", "bbox", "score", "category_id"} <= set(results[0])


def _train_net(repo_root, *argv):
    return subprocess.run(
        [sys.executable, os.path.join(repo_root, "train_net.py"), "--config-file", CONFIG, *argv,
         "DATASETS.TRAIN", '("autofocus_synth_tiny",)', "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()"],
        capture_output=True, text=True, cwd=repo_root, timeout=600,
    )


@pytest.mark.slow
def test_resume_after_the_newest_checkpoint_is_truncated_continues_from_the_one_before(repo_root, tmp_path):
    out = str(tmp_path / "run")
    first = _train_net(repo_root, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", out)
    assert first.returncode == 0, first.stderr[-3000:]
    final = tmp_path / "run" / "model_final.pth"
    assert (tmp_path / "run" / "last_checkpoint").read_text() == "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])  # e.g. a disk that filled up
    second = _train_net(repo_root, "--resume", "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", out)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert f"Cannot resume from {final}: Cannot read checkpoint {final}: a PyTorch zip checkpoint cut short" in log
    assert f"Resumed from {tmp_path / 'run' / 'model_0000003.pth'} instead of the unreadable model_final.pth" in log
    assert "Starting training from iteration 4" in log
    assert torch.load(final, weights_only=False)["iteration"] == 5  # rewritten whole by the resumed run


@pytest.mark.slow
def test_weights_of_another_class_count_are_refused_unless_finetune(compact_cfg, tmp_path):
    cfg = tiny_cfg(compact_cfg, tmp_path)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("three_classes")
    weights = str(tmp_path / "three_classes.pth")
    parser = train_net.add_finetune_argument(train_net.add_register_coco_argument(
        train_net.default_argument_parser()))
    common = ["--config-file", CONFIG, "MODEL.WEIGHTS", weights, "DATASETS.TRAIN", '("autofocus_synth_tiny",)',
              "DATASETS.TEST", '("autofocus_synth_tiny",)', "DATALOADER.NUM_WORKERS", "0"]
    with pytest.raises(WeightsMismatchError, match=r"three_classes.pth do not fit the model: 4 tensors .*"
                                                   r"3 classes in the file, 6 in the model"):
        train_net.main(parser.parse_args(["--eval-only", *common, "OUTPUT_DIR", str(tmp_path / "eval")]))
    # --finetune: trains from them (the classifier outputs keep their initialisation).
    trainer_args = parser.parse_args(["--finetune", *common, "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2",
                                      "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(tmp_path / "tune")])
    train_net.main(trainer_args)
    assert torch.load(tmp_path / "tune" / "model_final.pth", weights_only=False)["iteration"] == 1
