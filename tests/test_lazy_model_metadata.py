"""lazyconfig_train_net.py's checkpoints describe their model as train_net.py's do: the record holds
the LazyConfig (as yaml text), the class names and count; --eval-only checks train.init_checkpoint's
record against the LazyConfig, a contradicting model.roi_heads.num_classes being an error naming
the key."""
import json
import os
import sys

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog

from autofocus_d2.checkpoint import AtomicCheckpointer
from autofocus_d2.data import register_coco_datasets
from autofocus_d2.model_metadata import (
    ModelMetadataError,
    check_lazy_config_against_metadata,
    lazy_model_metadata,
    load_recorded_lazy_config,
    load_tool_config,
    read_model_metadata,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/Synthetic/autofocus_compact_fpn.py")
sys.path.insert(0, REPO)
import lazyconfig_train_net  # noqa: E402

NAME = "wtf_lazy_trees"


@pytest.fixture(scope="module")
def lazy_trees(tmp_path_factory, tiny_coco):
    """(--register-coco spec, overrides, weights): the tiny split as one class ("tree") and a
    random-init lazy model of one class saved as lazyconfig_train_net.py's training saves it."""
    tmp_path = tmp_path_factory.mktemp("lazy_trees")
    json_file, image_dir = tiny_coco
    data = json.load(open(json_file))
    data["categories"] = [{"id": 3, "name": "tree"}]
    for a in data["annotations"]:
        a["category_id"] = 3
    trees = tmp_path / "trees.json"
    trees.write_text(json.dumps(data))
    spec = [NAME, str(trees), image_dir]
    register_coco_datasets([spec])
    overrides = ["model.roi_heads.num_classes=1", f"dataloader.train.dataset.names={NAME}",
                 f"dataloader.test.dataset.names={NAME}", "train.device=cpu"]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(CONFIG), overrides)
    record = lazy_model_metadata(cfg)
    torch.manual_seed(0)
    AtomicCheckpointer(instantiate(cfg.model), str(tmp_path / "train"), metadata=record).save("model_final")
    return spec, overrides, str(tmp_path / "train" / "model_final.pth")


def test_the_record_holds_the_lazy_config_and_the_class_names(lazy_trees, tmp_path):
    _, _, weights = lazy_trees
    record = read_model_metadata(weights)
    assert record["thing_classes"] == ["tree"] and record["num_classes"] == 1
    assert record["meta_architecture"] == "AutoFocusRCNN" and record["config"] is None
    (tmp_path / "recorded.yaml").write_text(record["lazy_config"])
    recorded = LazyConfig.load(str(tmp_path / "recorded.yaml"))  # read back as LazyConfig.load does
    assert recorded.model.roi_heads.num_classes == 1
    assert recorded.dataloader.test.dataset.names == NAME
    model = instantiate(recorded.model)
    model.load_state_dict(torch.load(weights, weights_only=False)["model"])  # the same model
    # The yaml tools cannot run these weights alone, and say why.
    with pytest.raises(ModelMetadataError, match="trained from a LazyConfig"):
        load_tool_config(None, [], weights)
    # ... and a checkpoint without the record has no LazyConfig to read back.
    AtomicCheckpointer(model, str(tmp_path)).save("plain")
    with pytest.raises(ModelMetadataError, match="carry no record, no LazyConfig: pass --config-file"):
        load_recorded_lazy_config(str(tmp_path / "plain.pth"))


def _eval_only(spec, overrides, weights, out, *extra):
    parser = lazyconfig_train_net.add_finetune_argument(
        lazyconfig_train_net.add_register_coco_argument(lazyconfig_train_net.default_argument_parser()))
    return parser.parse_args(["--config-file", CONFIG, "--eval-only", "--register-coco", *spec,
                              f"train.init_checkpoint={weights}", f"train.output_dir={out}",
                              *overrides, *extra])


def test_eval_only_runs_the_recorded_weights_and_refuses_a_contradiction(lazy_trees, tmp_path, monkeypatch):
    spec, overrides, weights = lazy_trees
    tested = []
    monkeypatch.setattr(lazyconfig_train_net, "do_test", lambda cfg, model: tested.append(model) or {})
    lazyconfig_train_net.main(_eval_only(spec, overrides, weights, tmp_path / "eval"))
    (model,) = tested
    saved = torch.load(weights, weights_only=False)["model"]["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, saved)  # the weights loaded
    # The weights alone: the LazyConfig they carry (the test dataset named in it, registered here).
    parser = lazyconfig_train_net.add_register_coco_argument(lazyconfig_train_net.default_argument_parser())
    lazyconfig_train_net.main(parser.parse_args(["--eval-only", "--register-coco", *spec,
                                                 f"train.init_checkpoint={weights}",
                                                 f"train.output_dir={tmp_path / 'alone'}"]))
    assert len(tested) == 2 and tested[1].roi_heads.num_classes == 1
    assert torch.equal(tested[1].roi_heads.box_predictor.cls_score.weight, saved)
    with pytest.raises(SystemExit, match="--config-file is required"):
        lazyconfig_train_net.main(parser.parse_args(["--eval-only"]))
    with pytest.raises(ModelMetadataError,
                       match="contradicts the weights .*: model.roi_heads.num_classes is 6 in the config but 1"):
        lazyconfig_train_net.main(_eval_only(spec, overrides, weights, tmp_path / "eval6",
                                             "model.roi_heads.num_classes=6"))
    # A test dataset with other class names is refused too, naming it.
    MetadataCatalog.get("wtf_lazy_bushes").set(thing_classes=["bush"])
    cfg = LazyConfig.apply_overrides(LazyConfig.load(CONFIG),
                                     [*overrides, "dataloader.test.dataset.names=wtf_lazy_bushes"])
    with pytest.raises(ModelMetadataError, match="thing_classes of dataloader.test.dataset.names 'wtf_lazy_bushes'"):
        check_lazy_config_against_metadata(cfg, read_model_metadata(weights), weights)


@pytest.mark.slow
def test_lazy_training_writes_the_record(lazy_trees, tmp_path):
    spec, overrides, _ = lazy_trees
    data_opts = ["DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    parser = lazyconfig_train_net.add_finetune_argument(
        lazyconfig_train_net.add_register_coco_argument(lazyconfig_train_net.default_argument_parser()))
    lazyconfig_train_net.main(parser.parse_args([
        "--config-file", CONFIG, "--register-coco", *spec, *overrides, "train.max_iter=1",
        "train.checkpointer.period=1", "lr_multiplier.warmup_length=0.0", "train.eval_period=0",
        f"dataloader.train.cfg.opts={data_opts!r}".replace(" ", ""), f"train.output_dir={tmp_path}"]))
    record = read_model_metadata(str(tmp_path / "model_final.pth"))
    assert record["thing_classes"] == ["tree"] and record["num_classes"] == 1
    assert "num_classes: 1" in record["lazy_config"] and record["config"] is None
