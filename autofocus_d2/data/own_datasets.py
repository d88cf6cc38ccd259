"""Your own COCO-format datasets, registered from the command line of every tool.

``--register-coco NAME JSON IMAGE_DIR`` (repeatable) on ``train_net.py``, ``tools/benchmark.py``,
``tools/mine_negative_chips.py`` and ``demo.py`` calls :func:`register_coco_datasets`, which is
Detectron2's ``register_coco_instances`` with checks: the files exist, the json is COCO instances
json, and a name is not silently re-pointed at another json.
"""
import argparse
import json
import os
from typing import List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["add_register_coco_argument", "register_coco_datasets"]

_FLAG = "--register-coco"


def add_register_coco_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--register-coco NAME JSON IMAGE_DIR`` (repeatable) to a tool's argument parser."""
    parser.add_argument(
        _FLAG,
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format dataset (instances json and its image folder) under NAME "
        "before running, so that NAME works in DATASETS.TRAIN / DATASETS.TEST / --dataset; repeatable",
    )
    return parser


def register_coco_datasets(specs: Sequence[Sequence[str]]) -> List[str]:
    """
    Register each ``(name, json_file, image_dir)`` as a COCO instances dataset (Detectron2's
    ``register_coco_instances``: ``evaluator_type="coco"``, so ``COCOEvaluator`` and the benchmark
    evaluate it) and return the names.

    Raises:
        FileNotFoundError: the json or the image folder does not exist.
        ValueError: the json is not COCO instances json (no "images"/"annotations"/"categories"),
            or ``name`` is already registered with another json file.
    """
    names = []
    for spec in specs:
        if len(spec) != 3:
            raise ValueError(f"{_FLAG} takes NAME JSON IMAGE_DIR, got {list(spec)}")
        name, json_file, image_dir = spec[0], os.path.abspath(spec[1]), os.path.abspath(spec[2])
        if not os.path.isfile(json_file):
            raise FileNotFoundError(f"{_FLAG} {name}: the json file {json_file} does not exist")
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"{_FLAG} {name}: the image folder {image_dir} does not exist")
        with open(json_file) as f:
            try:
                keys = set(json.load(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"{_FLAG} {name}: {json_file} is not valid json ({e})") from None
        missing = {"images", "annotations", "categories"} - keys
        if missing:
            raise ValueError(
                f"{_FLAG} {name}: {json_file} is not COCO instances json (no {sorted(missing)})"
            )
        if name in DatasetCatalog.list():
            existing = MetadataCatalog.get(name).get("json_file", None)
            if existing is None or os.path.abspath(existing) != json_file:
                raise ValueError(
                    f"{_FLAG} {name}: a dataset of that name is already registered "
                    f"(json_file {existing}); choose another name"
                )
            names.append(name)
            continue
        register_coco_instances(name, {}, json_file, image_dir)
        names.append(name)
    return names
