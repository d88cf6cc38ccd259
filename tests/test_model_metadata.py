"""A trained model describes itself: train_net.py writes the config and class names into its
checkpoints, and every tool runs the weights alone with the right class count and names; a config
that contradicts them is an error naming the key."""
import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from autofocus_d2.data import tool_config_and_dataset
from autofocus_d2.model_metadata import (
    ModelMetadataError,
    load_tool_config,
    read_model_metadata,
)
from autofocus_d2.model_zoo import get_config_file
from tools import benchmark
import demo
import train_net

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")

NAME = "wtc_trees_tiny"  # one class, "tree": the tiny split's boxes, all of one category


@pytest.fixture(scope="module")
def trees(tmp_path_factory, tiny_coco):
    """(--register-coco spec, weights): a one-class dataset made from the tiny split, and the
    model_final.pth of 2 iterations of train_net.py on it."""
    json_file, image_dir = tiny_coco
    data = json.load(open(json_file))
    data["categories"] = [{"id": 7, "name": "tree"}]
    for a in data["annotations"]:
        a["category_id"] = 7
    folder = tmp_path_factory.mktemp("trees")
    trees_json = folder / "trees.json"
    trees_json.write_text(json.dumps(data))
    spec = [NAME, str(trees_json), image_dir]
    args = train_net.add_finetune_argument(train_net.add_register_coco_argument(
        train_net.default_argument_parser())).parse_args([
            "--config-file", CONFIG, "--register-coco", *spec,
            "MODEL.ROI_HEADS.NUM_CLASSES", "1", "DATASETS.TRAIN", f'("{NAME}",)',
            "DATASETS.TEST", f'("{NAME}",)', "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "2",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
            "OUTPUT_DIR", str(folder / "train"),
        ])
    train_net.main(args)
    return spec, str(folder / "train" / "model_final.pth")


def test_training_writes_the_record_into_its_checkpoints(trees, tmp_path):
    _, weights = trees
    record = read_model_metadata(weights)
    assert record["thing_classes"] == ["tree"]
    assert record["num_classes"] == 1 and record["meta_architecture"] == "AutoFocusRCNN"
    assert "NUM_CLASSES: 1" in record["config"] and NAME in record["config"]
    # A plain checkpoint has none.
    cfg = load_tool_config(CONFIG, ["MODEL.DEVICE", "cpu"])
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("plain")
    assert read_model_metadata(str(tmp_path / "plain.pth")) is None
    with pytest.raises(ModelMetadataError, match="carry no config record.*pass --config-file"):
        load_tool_config(None, ["MODEL.WEIGHTS", str(tmp_path / "plain.pth")])


def test_weights_alone_give_the_config_and_the_class_names(trees):
    _, weights = trees
    cfg = load_tool_config(None, ["MODEL.DEVICE", "cpu"], weights)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1 and cfg.MODEL.WEIGHTS == weights
    assert cfg.DATASETS.TEST == (NAME,)
    assert MetadataCatalog.get(NAME).thing_classes == ["tree"]
    # A test dataset without class names (not registered here) gets the weights' names.
    cfg = load_tool_config(None, ["DATASETS.TEST", '("wtc_unregistered",)'], weights)
    assert MetadataCatalog.get("wtc_unregistered").thing_classes == ["tree"]
    # An explicit config still wins where it agrees.
    cfg = load_tool_config(CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "1", "DATASETS.TEST", f'("{NAME}",)'],
                           weights)
    assert cfg.MODEL.AUTOFOCUS.SCALES == load_tool_config(CONFIG).MODEL.AUTOFOCUS.SCALES
    # An integer where the config expects a float (as the export docs write it), every tool alike.
    cfg = load_tool_config(None, ["MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX", "0"], weights)
    assert cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX == 0.0


@pytest.mark.parametrize("config_file, opts, key", [
    (CONFIG, [], "MODEL.ROI_HEADS.NUM_CLASSES"),  # the built-in config: 6 classes
    (None, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"], "MODEL.ROI_HEADS.NUM_CLASSES"),
    (None, ["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"], "MODEL.META_ARCHITECTURE"),
    (CONFIG, ["MODEL.ROI_HEADS.NUM_CLASSES", "1", "DATASETS.TEST", '("wtc_bushes",)'],
     "thing_classes of DATASETS.TEST 'wtc_bushes'"),
])
def test_a_config_that_contradicts_the_weights_is_an_error_naming_the_key(trees, config_file, opts, key):
    _, weights = trees
    MetadataCatalog.get("wtc_bushes").set(thing_classes=["bush"])
    with pytest.raises(ModelMetadataError, match=f"contradicts the weights .*: {key} is "):
        load_tool_config(config_file, opts, weights)


def test_demo_runs_the_weights_alone_and_names_the_classes(trees, tmp_path, monkeypatch, tiny_coco):
    _, weights = trees
    seen = {}

    def spy(rgb, instances, metadata, threshold):
        seen["classes"] = list(metadata.thing_classes)
        return rgb

    built = []
    monkeypatch.setattr(demo, "draw_detections", spy)
    monkeypatch.setattr(demo, "load_tool_config", lambda *a: built.append(load_tool_config(*a)) or built[-1])
    image = os.path.join(tiny_coco[1], sorted(os.listdir(tiny_coco[1]))[0])
    # DATASETS.TEST names no registered dataset: the class names come from the weights.
    assert demo.main(["--weights", weights, "--input", image, "--output", str(tmp_path),
                      "--opts", "MODEL.DEVICE", "cpu", "DATASETS.TEST", '("wtc_demo_images",)']) == 0
    assert seen["classes"] == ["tree"]
    assert built[0].MODEL.ROI_HEADS.NUM_CLASSES == 1 and built[0].MODEL.WEIGHTS == weights
    with pytest.raises(SystemExit, match="MODEL.ROI_HEADS.NUM_CLASSES is 6 in the config but 1"):
        demo.main(["--config-file", CONFIG, "--weights", weights, "--input", image])


def test_benchmark_and_eval_only_run_the_weights_alone(trees, tmp_path, monkeypatch):
    spec, weights = trees
    cfg, dataset = tool_config_and_dataset(benchmark.parse_args(
        ["--weights", weights, "--register-coco", *spec, "--opts", "MODEL.DEVICE", "cpu"]))
    assert dataset == NAME and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1 and cfg.MODEL.WEIGHTS == weights
    # train_net.py --eval-only: the model it evaluates (the evaluation itself: test_train_net.py).
    tested = []
    monkeypatch.setattr(train_net.Trainer, "test", classmethod(
        lambda cls, cfg, model: tested.append((cfg, model)) or {}))
    args = train_net.add_finetune_argument(train_net.add_register_coco_argument(
        train_net.default_argument_parser())).parse_args([
            "--eval-only", "--register-coco", *spec, "MODEL.WEIGHTS", weights,
            "OUTPUT_DIR", str(tmp_path / "eval")])
    train_net.main(args)
    (cfg, model), = tested
    assert cfg.DATASETS.TEST == (NAME,) and model.roi_heads.num_classes == 1
    saved = torch.load(weights, weights_only=False)["model"]["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, saved)  # the weights loaded


def test_sahi_wrapper_runs_the_weights_alone(trees):
    pytest.importorskip("sahi", reason="sahi is optional (pip install sahi)")
    from autofocus_d2.integrations.sahi import AutoFocusSahiModel

    _, weights = trees
    model = AutoFocusSahiModel.from_weights(weights, device="cpu")
    assert model.category_mapping == {"0": "tree"}
    assert model.detector.roi_heads.num_classes == 1
    assert torch.equal(model.detector.roi_heads.box_predictor.cls_score.weight,
                       torch.load(weights, weights_only=False)["model"]["roi_heads.box_predictor.cls_score.weight"])
    with pytest.raises(ModelMetadataError, match="MODEL.ROI_HEADS.NUM_CLASSES is 6 in the config but 1"):
        AutoFocusSahiModel.from_config_file(CONFIG, weights, device="cpu")
