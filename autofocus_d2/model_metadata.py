"""A trained model that describes itself: the record that training writes inside each checkpoint,
and the tools' config built from it.

``train_net.py`` (through :class:`~autofocus_d2.checkpoint.AtomicCheckpointer`) writes into every
checkpoint, beside ``model``, the entry ``autofocus_d2_metadata``::

    {"version": 1, "config": <the full config as yaml>, "thing_classes": [names] or None,
     "num_classes": K, "meta_architecture": "AutoFocusRCNN"}

and the model zoo's release keeps it. ``lazyconfig_train_net.py`` writes the same record with
``"config": None`` and ``"lazy_config"``: the LazyConfig as yaml text, as ``LazyConfig.save`` writes
it (:func:`lazy_model_metadata`); its ``--eval-only`` checks ``train.init_checkpoint``'s record
against the LazyConfig (:func:`check_lazy_config_against_metadata`). :func:`read_model_metadata`
returns the record (None for a plain checkpoint). :func:`load_tool_config` is how the tools (demo, benchmark, ``train_net.py
--eval-only``, the SAHI wrapper) build their config: from the weights' record when no config file
is given; an explicit config file still wins, but one that contradicts the weights (class count,
meta-architecture, class names) is an error naming the key. The record's class names are set as
``thing_classes`` of the config's test datasets, so pictures and results name the classes.
"""
import logging
import os
import pickle
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager

from .config import add_autofocus_config, coerce_autofocus_numbers, merge_autofocus_file

__all__ = [
    "METADATA_KEY",
    "ModelMetadataError",
    "check_config_against_metadata",
    "check_lazy_config_against_metadata",
    "class_names",
    "lazy_model_metadata",
    "load_recorded_lazy_config",
    "load_tool_config",
    "model_metadata",
    "num_classes_key",
    "read_model_metadata",
    "register_class_names",
]

logger = logging.getLogger(__name__)

# The checkpoint entry holding the record.
METADATA_KEY = "autofocus_d2_metadata"
_VERSION = 1
_RETINANET_ARCHS = ("RetinaNet", "AutoFocusRetinaNet")


class ModelMetadataError(ValueError):
    """A config that contradicts the weights' record, or weights without a record and no config."""


def num_classes_key(cfg: CfgNode) -> str:
    """The config key holding the class count of ``cfg``'s meta-architecture."""
    if cfg.MODEL.META_ARCHITECTURE in _RETINANET_ARCHS:
        return "MODEL.RETINANET.NUM_CLASSES"
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _dataset_classes(names: Sequence[str]) -> Optional[List[str]]:
    """``thing_classes`` of the first of ``names`` whose metadata has them, else None."""
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None:
            return list(classes)
    return None


def class_names(cfg: CfgNode) -> Optional[List[str]]:
    """The class names of ``cfg``'s model: the ``thing_classes`` of the first DATASETS.TEST (then
    DATASETS.TRAIN) dataset that has them (:func:`load_tool_config` fills the test datasets' from
    the weights' record), when that list has the model's class count; else None."""
    classes = _dataset_classes(list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN))
    if classes is None or len(classes) != int(_get(cfg, num_classes_key(cfg))):
        return None
    return classes


def model_metadata(cfg: CfgNode) -> Dict[str, Any]:
    """The record of a model trained with ``cfg``: the config as yaml, the class names (the
    ``thing_classes`` of DATASETS.TRAIN[0], else DATASETS.TEST[0]; None when neither has a list of
    the model's class count), the class count and the meta-architecture."""
    num_classes = int(_get(cfg, num_classes_key(cfg)))
    classes = _dataset_classes(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    if classes is not None and len(classes) != num_classes:
        logger.warning("Not recording class names in the checkpoints: the dataset has %d (%s), the "
                       "model %d (%s)", len(classes), classes, num_classes, num_classes_key(cfg))
        classes = None
    return {
        "version": _VERSION,
        "config": cfg.dump(),
        "thing_classes": classes,
        "num_classes": num_classes,
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
    }


def read_model_metadata(path: str) -> Optional[Dict[str, Any]]:
    """The record written inside the checkpoint ``path`` (``.pth`` of training, ``.pkl`` of the
    model zoo; local or a PathManager URL), or None when it has none (a plain checkpoint).
    A file that cannot be read raises the error of its loader."""
    local = PathManager.get_local_path(path)
    if local.endswith(".pkl"):
        with open(local, "rb") as f:
            data = pickle.load(f, encoding="latin1")  # as DetectionCheckpointer reads .pkl files
    else:
        try:
            data = torch.load(local, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # objects beyond tensors: as DetectionCheckpointer loads it
            data = torch.load(local, map_location="cpu", weights_only=False)
    record = data.get(METADATA_KEY) if isinstance(data, dict) else None
    return dict(record) if isinstance(record, dict) else None


def _contradiction(weights: str, key: str, ours: Any, theirs: Any, fix: str) -> ModelMetadataError:
    return ModelMetadataError(
        f"The config contradicts the weights {weights}: {key} is {ours!r} in the config but "
        f"{theirs!r} in the weights' record. Fix: {fix}.")


def check_config_against_metadata(cfg: CfgNode, record: Dict[str, Any], weights: str) -> None:
    """Raise :class:`ModelMetadataError` naming the key when ``cfg`` contradicts the record of the
    weights ``weights``: meta-architecture, class count, or the class names of DATASETS.TEST."""
    def fail(key: str, ours: Any, theirs: Any) -> None:
        raise _contradiction(weights, key, ours, theirs, "drop --config-file (the weights carry their "
                             "config), or use the config they were trained with")

    if cfg.MODEL.META_ARCHITECTURE != record["meta_architecture"]:
        fail("MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, record["meta_architecture"])
    key = num_classes_key(cfg)
    if int(_get(cfg, key)) != int(record["num_classes"]):
        fail(key, int(_get(cfg, key)), int(record["num_classes"]))
    names = record.get("thing_classes")
    if names is None:
        return
    for dataset in cfg.DATASETS.TEST:
        classes = MetadataCatalog.get(dataset).get("thing_classes", None)
        if classes is not None and list(classes) != list(names):
            fail(f"thing_classes of DATASETS.TEST {dataset!r}", list(classes), list(names))


def register_class_names(cfg: CfgNode, record: Optional[Dict[str, Any]]) -> None:
    """Set the record's class names as ``thing_classes`` of every DATASETS.TEST dataset that has
    none yet (pictures and results then name the classes; a dataset with other names is refused
    by :func:`check_config_against_metadata`)."""
    names = (record or {}).get("thing_classes")
    if names is None:
        return
    for dataset in cfg.DATASETS.TEST:
        metadata = MetadataCatalog.get(dataset)
        if metadata.get("thing_classes", None) is None:
            metadata.set(thing_classes=list(names))


def _weights_in_opts(opts: Sequence[str]) -> Optional[str]:
    """The last ``MODEL.WEIGHTS`` value of KEY VALUE pairs."""
    opts = list(opts)
    found = None
    for key, value in zip(opts[0::2], opts[1::2]):
        if key == "MODEL.WEIGHTS":
            found = value
    return found


def load_tool_config(config_file: Optional[str], opts: Sequence[str] = (),
                     weights: Optional[str] = None) -> CfgNode:
    """
    The config a tool runs the model ``weights`` with (frozen): ``config_file`` + ``opts`` when a
    config file is given, else the weights' own record + ``opts``; MODEL.WEIGHTS is ``weights``.

    Args:
        config_file: a yaml config, or None / "" to use the config recorded in the weights.
        opts: KEY VALUE overrides, applied last.
        weights: the checkpoint; default the MODEL.WEIGHTS of ``opts``, else of the config file.

    Raises:
        ModelMetadataError: no config file and the weights carry no record (or there are no
            weights); or the config (file or ``opts``) contradicts the record, naming the key.
    """
    opts = list(opts)
    weights = weights or _weights_in_opts(opts)
    cfg = get_cfg()
    add_autofocus_config(cfg)
    if config_file:
        merge_autofocus_file(cfg, config_file)
    weights = weights or cfg.MODEL.WEIGHTS
    exists = bool(weights) and ("://" in weights or os.path.isfile(weights))
    record = read_model_metadata(weights) if exists else None
    if not config_file:
        if record is None:
            if not weights:
                why = "no weights (MODEL.WEIGHTS) either"
            elif not exists:
                why = f"the weights {weights} do not exist"
            else:
                why = (f"the weights {weights} carry no config record (checkpoints written by "
                       "train_net.py do)")
            raise ModelMetadataError(f"No config file given and {why}: pass --config-file.")
        if record.get("config") is None:  # lazyconfig_train_net.py's weights
            raise ModelMetadataError(
                f"The weights {weights} were trained from a LazyConfig (their record holds it as "
                "'lazy_config', not a yaml config): pass --config-file (a yaml config that agrees "
                "with them), or evaluate them with lazyconfig_train_net.py --eval-only.")
        cfg.merge_from_other_cfg(cfg.load_cfg(record["config"]))
    cfg.merge_from_list(coerce_autofocus_numbers(cfg, opts))
    if weights:
        cfg.MODEL.WEIGHTS = weights
    if record is not None:
        check_config_against_metadata(cfg, record, weights)
        register_class_names(cfg, record)
    cfg.freeze()
    return cfg


# ---- LazyConfig (lazyconfig_train_net.py) ---------------------------------------------------------
LAZY_NUM_CLASSES_KEY = "model.roi_heads.num_classes"


def _lazy_names(node: Any) -> List[str]:
    """The dataset names of a LazyConfig ``dataloader.*.dataset`` node (str or list)."""
    names = node.get("dataset", {}).get("names") if node is not None else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def _lazy_num_classes(cfg: Any) -> Optional[int]:
    heads = cfg.model.get("roi_heads")
    return None if heads is None or heads.get("num_classes") is None else int(heads.num_classes)


def _lazy_meta_architecture(cfg: Any) -> str:
    target = cfg.model._target_
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else target.__name__


def lazy_model_metadata(cfg: Any) -> Dict[str, Any]:
    """The record of a model trained from the LazyConfig ``cfg`` (``model.roi_heads``): the
    record of :func:`model_metadata` with ``"config": None`` (a yaml config would not describe
    the lazy model) and ``"lazy_config"``: ``cfg`` as yaml text, as ``LazyConfig.save`` writes it
    (``LazyConfig.load`` reads it back from a ``.yaml`` file); the class names are the
    ``thing_classes`` of ``dataloader.train.dataset.names`` (else ``dataloader.test``'s). Call it
    before the training loop puts objects in ``cfg`` (``optimizer.params.model``)."""
    num_classes = _lazy_num_classes(cfg)
    dataloader = cfg.get("dataloader", {})
    classes = _dataset_classes(_lazy_names(dataloader.get("train")) + _lazy_names(dataloader.get("test")))
    if classes is not None and len(classes) != num_classes:
        logger.warning("Not recording class names in the checkpoints: the dataset has %d (%s), the "
                       "model %s (%s)", len(classes), classes, num_classes, LAZY_NUM_CLASSES_KEY)
        classes = None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        LazyConfig.save(cfg, path)
        with open(path) as f:
            text = f.read()
    return {
        "version": _VERSION,
        "config": None,
        "lazy_config": text,
        "thing_classes": classes,
        "num_classes": num_classes,
        "meta_architecture": _lazy_meta_architecture(cfg),
    }


def check_lazy_config_against_metadata(cfg: Any, record: Dict[str, Any], weights: str) -> None:
    """:func:`check_config_against_metadata` for a LazyConfig ``cfg`` (the weights' record from
    either trainer): the model's class, ``model.roi_heads.num_classes`` and the class names of
    ``dataloader.test.dataset.names``; the record's names are then set as ``thing_classes`` of
    those datasets that have none."""
    def fail(key: str, ours: Any, theirs: Any) -> None:
        raise _contradiction(weights, key, ours, theirs, "use the LazyConfig they were trained with "
                             "(their record's 'lazy_config'), or override the key to agree")

    if _lazy_meta_architecture(cfg) != record["meta_architecture"]:
        fail("model._target_", _lazy_meta_architecture(cfg), record["meta_architecture"])
    num_classes = _lazy_num_classes(cfg)
    if num_classes is not None and num_classes != int(record["num_classes"]):
        fail(LAZY_NUM_CLASSES_KEY, num_classes, int(record["num_classes"]))
    names = record.get("thing_classes")
    if names is None:
        return
    for dataset in _lazy_names(cfg.get("dataloader", {}).get("test")):
        metadata = MetadataCatalog.get(dataset)
        classes = metadata.get("thing_classes", None)
        if classes is None:
            metadata.set(thing_classes=list(names))
        elif list(classes) != list(names):
            fail(f"thing_classes of dataloader.test.dataset.names {dataset!r}", list(classes), list(names))


def load_recorded_lazy_config(weights: str) -> Any:
    """The LazyConfig recorded in the checkpoint ``weights`` by ``lazyconfig_train_net.py``
    (``LazyConfig.load`` of its ``lazy_config`` text).

    Raises:
        ModelMetadataError: the weights carry no record, or a record without a LazyConfig.
    """
    record = read_model_metadata(weights) if os.path.isfile(weights) or "://" in weights else None
    if record is None or not record.get("lazy_config"):
        what = "no record" if record is None else "a record of train_net.py (a yaml config)"
        raise ModelMetadataError(f"The weights {weights} carry {what}, no LazyConfig: pass --config-file.")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "recorded_config.yaml")
        with open(path, "w") as f:
            f.write(record["lazy_config"])
        return LazyConfig.load(path)
