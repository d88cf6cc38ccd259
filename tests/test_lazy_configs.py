"""The LazyConfig .py configs load, build, and equal their yaml twins (model and pipeline)."""
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model

from autofocus_d2 import model_zoo

TWINS = ["Synthetic/autofocus_compact_fpn", "COCO-Detection/autofocus_R_50_FPN_1x"]


def _pipeline_settings(pipeline):
    out = {k: v for k, v in vars(pipeline).items() if k not in ("policy", "scale_chain")}
    out["policy"] = (type(pipeline.policy).__name__, vars(pipeline.policy))
    out["scales"] = pipeline.scale_chain.scales
    return out


def _head_settings(model):
    rpn, roi = model.proposal_generator, model.roi_heads
    predictor = roi.box_predictor
    return {
        "rpn": (type(rpn).__name__, rpn.pre_nms_topk, rpn.post_nms_topk, rpn.nms_thresh,
                rpn.batch_size_per_image, rpn.ignore_iou, rpn.anchor_generator.strides,
                [c.tolist() for c in rpn.anchor_generator.cell_anchors]),
        "roi": (type(roi).__name__, roi.num_classes, roi.batch_size_per_image, roi.positive_fraction,
                roi.ignore_iou, roi.box_in_features),
        "predictor": (predictor.test_score_thresh, predictor.test_nms_thresh,
                      predictor.test_topk_per_image),
        "focus": (model.focus_in_feature, model.focus_stride, model.focus_loss_weight,
                  model.focus_small_range, model.focus_ignore_max, model.focus_ignore_ignored_boxes),
        "input": (model.input_format, model.pixel_mean.flatten().tolist(), model.pixel_std.flatten().tolist()),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", TWINS)
def test_lazy_config_builds_the_yaml_model(name):
    lazy = model_zoo.get_config(name + ".py")
    yaml_cfg = model_zoo.get_config(name + ".yaml")
    yaml_cfg.MODEL.DEVICE = "cpu"
    a, b = instantiate(lazy.model), build_model(yaml_cfg)
    assert type(a) is type(b)
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.state_dict().items()}
    assert shapes_a == shapes_b
    assert _head_settings(a) == _head_settings(b)
    assert _pipeline_settings(a.pipeline) == _pipeline_settings(b.pipeline)
    # Same weights -> same outputs: the two are one model.
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    torch.manual_seed(0)
    image = (torch.rand(3, 300, 420) * 255).round()
    with torch.no_grad():
        out_a, out_b = a([{"image": image}])[0], b([{"image": image}])[0]
    assert torch.equal(out_a["instances"].pred_boxes.tensor, out_b["instances"].pred_boxes.tensor)
    assert out_a["autofocus"]["pixels_per_scale"] == out_b["autofocus"]["pixels_per_scale"]


def test_lazy_configs_are_listed_and_resolve_relative_imports():
    names = model_zoo.list_configs()
    for name in TWINS:
        assert name + ".py" in names and name + ".yaml" in names
    cfg = LazyConfig.load(model_zoo.get_config_file("Synthetic/autofocus_compact_fpn.py"))
    assert set(cfg) >= {"model", "dataloader", "optimizer", "lr_multiplier", "train"}
    assert cfg.train.max_iter == 560 and cfg.train.device == "cpu"
    # The SNIPER chip sampler reads the yaml twin's INPUT.SNIPER keys.
    assert cfg.dataloader.train.cfg.config_file.name == "Synthetic/autofocus_compact_fpn.yaml"
    assert cfg.dataloader.test.dataset.names == "autofocus_synth_val"


def test_lazy_schedule_equals_the_yaml_schedule():
    from detectron2.solver import build_lr_scheduler

    lazy = model_zoo.get_config("Synthetic/autofocus_compact_fpn.py")
    yaml_cfg = model_zoo.get_config("Synthetic/autofocus_compact_fpn.yaml")
    sched = instantiate(lazy.lr_multiplier)
    param = torch.nn.Parameter(torch.zeros(1))
    yaml_sched = build_lr_scheduler(yaml_cfg, torch.optim.SGD([param], lr=1.0))
    yaml_lrs = []
    for _ in range(yaml_cfg.SOLVER.MAX_ITER):
        yaml_lrs.append(yaml_sched.get_last_lr()[0])
        yaml_sched.step()
    lazy_lrs = [sched(i / lazy.train.max_iter) for i in range(lazy.train.max_iter)]
    assert lazy_lrs == pytest.approx(yaml_lrs, rel=1e-6, abs=1e-9)
    assert lazy.optimizer.lr == yaml_cfg.SOLVER.BASE_LR


@pytest.mark.slow
def test_lazyconfig_train_net_trains_and_evaluates_on_own_data(tmp_path, tiny_coco):
    """A user's own one-class COCO data (the tiny split, every box of one category of id 7),
    registered with --register-coco and chosen with Detectron2's usual overrides
    ``dataloader.train.dataset.names`` / ``dataloader.test.dataset.names``: a few iterations, then
    --eval-only on its weights prints the efficiency table and writes the COCO results."""
    import json
    import os
    import re
    import subprocess
    import sys

    json_file, image_dir = tiny_coco
    with open(json_file) as f:
        data = json.load(f)
    data["categories"] = [{"id": 7, "name": "blob"}]
    for a in data["annotations"]:
        a["category_id"] = 7
    own = tmp_path / "own.json"
    own.write_text(json.dumps(data))

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(repo, "configs/Synthetic/autofocus_compact_fpn.py")
    data_opts = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    out = tmp_path / "out"
    register = ["--register-coco", "own_train", str(own), image_dir,
                "--register-coco", "own_val", str(own), image_dir]  # flags before the overrides
    common = [f"dataloader.train.cfg.opts={data_opts!r}".replace(" ", ""),
              "dataloader.train.dataset.names=own_train", "dataloader.test.dataset.names=own_val",
              "dataloader.test.num_workers=0", "model.roi_heads.num_classes=1", f"train.output_dir={out}"]
    script = os.path.join(repo, "lazyconfig_train_net.py")
    proc = subprocess.run(
        [sys.executable, script, "--config-file", config, *register, "train.max_iter=4",
         "train.checkpointer.period=4", "lr_multiplier.warmup_length=0.25", *common],
        capture_output=True, text=True, cwd=repo, timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    weights = out / "model_final.pth"
    assert weights.exists()
    proc = subprocess.run(
        [sys.executable, script, "--config-file", config, "--eval-only", *register,
         f"train.init_checkpoint={weights}", "model.pipeline.raw_score_thresh=0.0", *common],
        capture_output=True, text=True, cwd=repo, timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # 4 iterations give low scores: the raw-score threshold 0 keeps them, so COCO AP is computed.
    assert "Evaluation results for bbox" in log and "copypaste: Task: autofocus_efficiency" in log
    # The efficiency table of train_net.py's evaluation (autofocus_d2's log, shown here too).
    assert "AutoFocus efficiency over 6 images" in log
    assert re.search(r"\| scale +\| +pixels \| +pyramid pixels \| +ratio \| +chips \|", log)
    results = json.loads((out / "inference" / "own_val" / "coco_instances_results.json").read_text())
    assert results and {r["category_id"] for r in results} == {7}  # the dataset's own category id
    assert {r["image_id"] for r in results} <= {im["id"] for im in data["images"]}
