"""Your own COCO-format datasets, registered from the command line of every tool.

``--register-coco NAME JSON IMAGE_DIR`` (repeatable) on ``train_net.py``, ``tools/benchmark.py``,
``tools/mine_negative_chips.py`` and ``demo.py`` calls :func:`register_coco_datasets`, which is
Detectron2's ``register_coco_instances`` with checks: the files exist, the json is COCO instances
json whose records pass :func:`~autofocus_d2.data.dataset_checks.validate_coco_instances`, and a
name is not silently re-pointed at another json. The metadata gets ``thing_classes`` and the
contiguous id mapping from the json's categories at once; loading clips boxes to their image and
drops empty ones (:func:`~autofocus_d2.data.dataset_checks.clip_and_drop_boxes`).
"""
import argparse
import functools
import logging
import os
from typing import Any, Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..evaluation.detection_cap import dense_scene_hint, max_objects_per_image
from .dataset_checks import (
    DatasetError,
    clip_and_drop_boxes,
    coco_thing_metadata,
    read_coco_instances,
    validate_coco_instances,
)

__all__ = ["add_register_coco_argument", "register_coco_datasets", "tool_config_and_dataset",
           "warn_dense_scenes"]

_FLAG = "--register-coco"
logger = logging.getLogger(__name__)


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


def tool_config_and_dataset(args: argparse.Namespace):
    """What the evaluation tools (benchmark, tuner) start with: ``--register-coco`` registered, the
    config of ``--config-file`` (or else the one recorded in the weights, ``--weights`` or
    MODEL.WEIGHTS of ``--opts``: :func:`~autofocus_d2.model_metadata.load_tool_config`) + ``--opts``
    (frozen), and the dataset ``--dataset`` or else ``DATASETS.TEST[0]``. Returns (cfg, dataset
    name); raises ValueError when there is no dataset or the config contradicts the weights."""
    from ..model_metadata import load_tool_config

    register_coco_datasets(args.register_coco)
    cfg = load_tool_config(args.config_file, args.opts, getattr(args, "weights", None))
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if dataset is None:
        raise ValueError("no --dataset given and DATASETS.TEST is empty")
    warn_dense_scenes(cfg, [dataset])
    return cfg, dataset


def warn_dense_scenes(cfg, dataset_names: Sequence[str]) -> List[str]:
    """Log, for each of ``dataset_names`` registered by ``--register-coco``, its classes and the
    largest number of objects in one image, and warn (with the setting to use) when that is more
    than ``cfg``'s TEST.DETECTIONS_PER_IMAGE; return the warnings."""
    for name in dict.fromkeys(dataset_names):
        metadata = MetadataCatalog.get(name)
        most = metadata.get("max_objects_per_image", None)
        if most is not None:
            logger.info("%s %s: classes %s, at most %d objects per image (%s: %d)", _FLAG, name,
                        metadata.thing_classes, most, "TEST.DETECTIONS_PER_IMAGE",
                        cfg.TEST.DETECTIONS_PER_IMAGE)
    hints = dense_scene_hint(cfg, dataset_names)
    for hint in hints:
        logger.warning(hint)
    return hints


def register_coco_datasets(specs: Sequence[Sequence[str]]) -> List[str]:
    """
    Register each ``(name, json_file, image_dir)`` as a COCO instances dataset (as Detectron2's
    ``register_coco_instances``: ``evaluator_type="coco"``, so ``COCOEvaluator`` and the benchmark
    evaluate it, plus ``thing_classes``) after checking it, and return the names.

    Raises:
        FileNotFoundError: the json or the image folder does not exist.
        DatasetError (a ValueError): the json is not COCO instances json (saying what it is), or
            its records have problems (listed, see ``validate_coco_instances``).
        ValueError: ``name`` is already registered with another json file.
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
        try:
            data = read_coco_instances(json_file)
        except DatasetError as e:
            raise DatasetError(f"{_FLAG} {name}: {e}") from None
        if name in DatasetCatalog.list():
            existing = MetadataCatalog.get(name).get("json_file", None)
            if existing is None or os.path.abspath(existing) != json_file:
                raise ValueError(
                    f"{_FLAG} {name}: a dataset of that name is already registered "
                    f"(json_file {existing}); choose another name"
                )
            names.append(name)
            continue
        validate_coco_instances(data, image_dir, f"{_FLAG} {name} ({json_file})")
        thing_classes, id_map = coco_thing_metadata(data)
        most = max_objects_per_image(data.get("annotations", []))
        DatasetCatalog.register(name, functools.partial(_load_clipped, json_file, image_dir, name))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_dir, evaluator_type="coco",
            thing_classes=thing_classes, thing_dataset_id_to_contiguous_id=id_map,
            max_objects_per_image=most,
        )
        names.append(name)
    return names


def _load_clipped(json_file: str, image_dir: str, name: str) -> List[Dict[str, Any]]:
    """``load_coco_json`` followed by ``clip_and_drop_boxes`` (what ``name`` loads as)."""
    return clip_and_drop_boxes(load_coco_json(json_file, image_dir, name), name)
