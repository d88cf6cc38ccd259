"""--register-coco: a COCO-format dataset registered from the command line of the tools."""
import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

import train_net
from autofocus_d2.data import add_register_coco_argument, register_coco_datasets
from autofocus_d2.model_zoo import get_config_file

CONFIG = get_config_file("Synthetic/autofocus_compact_fpn.yaml")


@pytest.mark.slow
def test_registered_from_the_command_line_it_evaluates_as_the_built_in_split(tiny_coco, compact_cfg, tmp_path):
    """train_net.py --eval-only on the tiny split, registered by --register-coco under another name,
    gives exactly the detections and AP of the built-in registration."""
    json_file, image_dir = tiny_coco
    cfg = compact_cfg()
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("random_init")
    results = {}
    for name, extra in (("autofocus_synth_tiny", []),
                        ("my_tiny", ["--register-coco", "my_tiny", json_file, image_dir])):
        argv = ["--config-file", CONFIG, "--eval-only", *extra,
                "MODEL.WEIGHTS", str(tmp_path / "random_init.pth"), "DATASETS.TEST", f'("{name}",)',
                "OUTPUT_DIR", str(tmp_path / name), "DATALOADER.NUM_WORKERS", "0"]
        args = add_register_coco_argument(default_argument_parser()).parse_args(argv)
        metrics = train_net.main(args)
        preds = tmp_path / name / "inference" / name / "coco_instances_results.json"
        results[name] = (metrics["bbox"], json.loads(preds.read_text()))
    ours, theirs = results["my_tiny"], results["autofocus_synth_tiny"]
    assert len(ours[1]) > 0 and ours[1] == theirs[1]
    assert ours[0] == theirs[0]
    assert MetadataCatalog.get("my_tiny").evaluator_type == "coco"


def test_bad_registrations_name_the_problem(tiny_coco, tmp_path):
    json_file, image_dir = tiny_coco
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        register_coco_datasets([["x", str(tmp_path / "nowhere.json"), image_dir]])
    with pytest.raises(FileNotFoundError, match="image folder"):
        register_coco_datasets([["x", json_file, str(tmp_path / "no_images")]])
    not_coco = tmp_path / "list.json"
    not_coco.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not COCO instances json"):
        register_coco_datasets([["x", str(not_coco), image_dir]])
    with pytest.raises(ValueError, match="already registered"):
        register_coco_datasets([["autofocus_synth_val", json_file, image_dir]])
    # The same registration twice is fine (every process of a multi-GPU launch registers).
    assert register_coco_datasets([["again", json_file, image_dir]] * 2) == ["again", "again"]
    assert "again" in DatasetCatalog.list()
