"""Release a trained model into the model zoo (the logic of ``tools/release_checkpoint.py``).

From a training output directory (``model_final.pth`` and ``config.yaml`` as DefaultTrainer writes
them, and the evaluation metrics) it writes, Detectron2's model zoo style::

    <release_dir>/<config name without .yaml>/<h>/model_final_<h>.pkl   the weights only
                                                  config.yaml            the resolved config
                                                  metrics.json           the metrics of the row

where ``<h>`` is the first 6 hex digits of the sha256 of the ``.pkl``. The ``.pkl`` is a pickled
``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": False}``, the format
DetectionCheckpointer reads as a Detectron2 model zoo file (names matched exactly, no heuristics),
plus the training checkpoint's own record (``autofocus_d2_metadata``: config, class names; see
:mod:`autofocus_d2.model_metadata`) when it has one. ``half=True`` stores the float32 arrays as
float16 (half the size; loading casts them back to the model's float32).
Then it adds the manifest entry and the MODEL_ZOO.md row.
"""
import datetime
import json
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model

from ..config import add_autofocus_config
from ..data import ensure_split
from ..model_metadata import METADATA_KEY, read_model_metadata
from ..evaluation import AutoFocusEfficiencyEvaluator, build_coco_evaluator
from .model_zoo import (
    ModelZooError,
    canonical_name,
    check_weights_fit,
    get,
    get_config,
    get_config_file,
    manifest_path,
    read_manifest_file,
    sha256_of_file,
)
from .release_metrics import flatten_mapping, inference_speed_from_log, read_metrics, release_metrics

__all__ = [
    "Release",
    "release_checkpoint",
    "training_weights",
    "read_metrics",
    "release_metrics",
    "inference_speed_from_log",
    "schedule_name",
    "update_manifest",
    "model_zoo_row",
    "update_model_zoo_md",
    "MODEL_ZOO_TABLE_BEGIN",
    "MODEL_ZOO_TABLE_END",
    "MODEL_ZOO_HEADER",
    "verify_release",
    "evaluate_zoo_model",
]

logger = logging.getLogger(__name__)

AUTHOR = "autofocus-d2 tools/release_checkpoint.py"
# Pickle protocol of released files: fixed, so that the same weights give the same file and name.
PICKLE_PROTOCOL = 4
# The released-models table of MODEL_ZOO.md lies between these two lines.
MODEL_ZOO_TABLE_BEGIN = "<!-- released-models:begin (rows written by tools/release_checkpoint.py) -->"
MODEL_ZOO_TABLE_END = "<!-- released-models:end -->"
MODEL_ZOO_HEADER = (
    "| config | schedule | AP | AP<sub>small</sub> | pixels vs pyramid | images/s (device) | "
    "download | sha256 |\n|---|---|---|---|---|---|---|---|"
)
# Keys that may differ between the training run and the zoo config without changing the results.
_IGNORED_CONFIG_KEYS = {"MODEL.WEIGHTS", "MODEL.DEVICE"}
# Detectron2's schedules: 1x = 90k iterations of 16 images.
_ONE_X_IMAGES = 90000 * 16


@dataclass
class Release:
    """What :func:`release_checkpoint` wrote."""

    name: str  # config name, e.g. "Synthetic/autofocus_compact_fpn.yaml"
    checkpoint: str  # absolute path of model_final_<h>.pkl
    config: str  # absolute path of the resolved config.yaml beside it
    metrics_file: str  # absolute path of metrics.json beside it
    sha256: str
    entry: Dict[str, Any]  # the manifest entry
    manifest: Optional[str]  # the manifest file written, if any
    row: str  # the MODEL_ZOO.md row


# ------------------------------------------------------------------------------------------ weights
def training_weights(checkpoint_path: str) -> Dict[str, np.ndarray]:
    """The ``model`` weights of a DefaultTrainer checkpoint (optimizer, scheduler and iteration
    dropped), as numpy arrays on the CPU, in the checkpoint's order."""
    if not os.path.isfile(checkpoint_path):
        raise ModelZooError(
            f"Training checkpoint {checkpoint_path} does not exist. Fix: pass the OUTPUT_DIR of a "
            "finished train_net.py run (it ends with model_final.pth), or --checkpoint."
        )
    try:
        data = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise ModelZooError(f"Cannot read training checkpoint {checkpoint_path}: {e}") from e
    state = data.get("model") if isinstance(data, dict) else None
    if not isinstance(state, Mapping) or not state:
        raise ModelZooError(
            f"Training checkpoint {checkpoint_path} has no 'model' weights (keys: "
            f"{sorted(data) if isinstance(data, dict) else type(data).__name__}); expected a "
            "checkpoint saved by Detectron2's DetectionCheckpointer / DefaultTrainer."
        )
    dropped = sorted(k for k in data if k != "model")
    if dropped:
        logger.info("Dropping %s from %s", dropped, checkpoint_path)
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


# ------------------------------------------------------------------------------------------ configs
def _load_resolved_config(path: str) -> CfgNode:
    if not os.path.isfile(path):
        raise ModelZooError(
            f"Resolved config {path} does not exist. Fix: pass the OUTPUT_DIR of a train_net.py "
            "run (default_setup writes config.yaml there), or --config-yaml."
        )
    cfg = get_cfg()
    add_autofocus_config(cfg)
    try:
        cfg.merge_from_file(path)
    except Exception as e:  # yacs raises KeyError / ValueError / AssertionError on a bad file
        raise ModelZooError(f"Cannot load resolved config {path}: {e}") from e
    return cfg


def _as_lists(value):
    """Tuples (from a .yaml) and lists (from a dumped config) compare equal."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _flat_config(cfg: CfgNode) -> Dict[str, Any]:
    """{"MODEL.WEIGHTS": ..., ...} with tuples as lists."""
    return {k: _as_lists(v) for k, v in flatten_mapping(cfg, sep=".").items()}


def _check_config_matches(trained: CfgNode, zoo: CfgNode, name: str, trained_file: str) -> None:
    """The results depend on MODEL.* and the test-time INPUT keys: they must be the zoo config's."""
    a, b = _flat_config(trained), _flat_config(zoo)
    keys = [k for k in sorted(set(a) | set(b))
            if (k.startswith("MODEL.") or k in ("INPUT.FORMAT", "INPUT.MIN_SIZE_TEST",
                                                "INPUT.MAX_SIZE_TEST"))
            and k not in _IGNORED_CONFIG_KEYS and a.get(k) != b.get(k)]
    if keys:
        diffs = "; ".join(f"{k}: trained {a.get(k)!r}, config {b.get(k)!r}" for k in keys[:8])
        raise ModelZooError(
            f"The run's config {trained_file} differs from configs/{name} in {len(keys)} keys that "
            f"change the model or its results: {', '.join(keys)} "
            f"({diffs}{' ...' if len(keys) > 8 else ''}). Fix: release under "
            "the config the model was trained with, or put these values in that config."
        )


def schedule_name(cfg: CfgNode) -> str:
    """Detectron2's name of the schedule ("1x", "3x": multiples of 90k iterations of 16 images or
    SNIPER chips), else "<MAX_ITER> it x <IMS_PER_BATCH> img" ("chips" with INPUT.SNIPER.ENABLED)."""
    images = cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH
    if images % _ONE_X_IMAGES == 0 and cfg.SOLVER.IMS_PER_BATCH == 16:
        return f"{images // _ONE_X_IMAGES}x"
    unit = "chips" if cfg.INPUT.SNIPER.ENABLED else "img"
    return f"{cfg.SOLVER.MAX_ITER} it x {cfg.SOLVER.IMS_PER_BATCH} {unit}"


# ------------------------------------------------------------------------------------------ outputs
def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def update_manifest(manifest_file: str, name: str, entry: Dict[str, Any]) -> None:
    """Add or replace ``name``'s entry in ``manifest_file`` (created if missing)."""
    data = read_manifest_file(manifest_file) if os.path.isfile(manifest_file) else {}
    data[canonical_name(name)] = entry
    _write_json(manifest_file, data)


def model_zoo_row(name: str, entry: Mapping[str, Any], link: str, config_link: Optional[str] = None) -> str:
    """The MODEL_ZOO.md table row of a manifest entry (columns of :data:`MODEL_ZOO_HEADER`)."""
    m = entry["metrics"]
    cfg_link = config_link if config_link is not None else f"configs/{name}"
    return (
        f"| [{name[:-len('.yaml')]}]({cfg_link}) | {entry['schedule']} | {m['AP']:.1f} | "
        f"{m['AP_small']:.1f} | {m['pixel_ratio']:.2f} | {m['images_per_s']:.2f} ({m['device']}) | "
        f"[model]({link}) | `{entry['sha256'][:12]}` |"
    )


def update_model_zoo_md(md_file: str, name: str, row: str) -> None:
    """Replace the row of ``name`` in MODEL_ZOO.md's released-models table (the lines between
    :data:`MODEL_ZOO_TABLE_BEGIN` and :data:`MODEL_ZOO_TABLE_END`), or append it there."""
    if not os.path.isfile(md_file):
        raise ModelZooError(f"{md_file} does not exist. Fix: pass the repository's MODEL_ZOO.md.")
    with open(md_file) as f:
        lines = f.read().split("\n")
    try:
        begin, end = lines.index(MODEL_ZOO_TABLE_BEGIN), lines.index(MODEL_ZOO_TABLE_END)
    except ValueError:
        raise ModelZooError(
            f"{md_file} has no released-models table: expected the lines {MODEL_ZOO_TABLE_BEGIN!r} "
            f"and {MODEL_ZOO_TABLE_END!r} around it."
        ) from None
    if end < begin:
        raise ModelZooError(f"{md_file}: {MODEL_ZOO_TABLE_END!r} comes before {MODEL_ZOO_TABLE_BEGIN!r}")
    cell = f"| [{name[:-len('.yaml')]}]("
    for i in range(begin + 1, end):
        if lines[i].startswith(cell):
            lines[i] = row
            break
    else:
        lines.insert(end, row)
    with open(md_file, "w") as f:
        f.write("\n".join(lines))


def _link(url: str, md_file: Optional[str]) -> str:
    if "://" in url or md_file is None:
        return url
    return os.path.relpath(url, os.path.dirname(os.path.abspath(md_file)))


# ------------------------------------------------------------------------------------------ release
def release_checkpoint(
    train_dir: str,
    name: str,
    release_dir: str,
    *,
    manifest: Optional[str] = None,
    metrics_file: Optional[str] = None,
    checkpoint: Optional[str] = None,
    config_yaml: Optional[str] = None,
    url_prefix: Optional[str] = None,
    schedule: Optional[str] = None,
    images_per_s: Optional[float] = None,
    device: Optional[str] = None,
    model_zoo_md: Optional[str] = None,
    date: Optional[str] = None,
    half: bool = False,
) -> Release:
    """
    Release the model trained in ``train_dir`` under config ``name`` into ``release_dir``.

    Args:
        train_dir: OUTPUT_DIR of the training run: ``model_final.pth``, ``config.yaml``,
            ``metrics.json`` and ``log.txt`` are read from there unless given below.
        name: the zoo config the model was trained with (e.g. "Synthetic/autofocus_compact_fpn.yaml");
            the run's config must agree with it on MODEL.* and the test-time INPUT keys, and the
            weights must fit the model it builds.
        release_dir: where the release folder is written (see the module docstring).
        manifest: manifest file to add the entry to (created if missing); None writes none.
        metrics_file: evaluation results (see :func:`read_metrics`); default ``metrics.json``.
        checkpoint, config_yaml: override ``model_final.pth`` / ``config.yaml``.
        url_prefix: the released files' base URL (``<url_prefix>/<path under release_dir>``);
            default: the path relative to the manifest's directory (an absolute path without a
            manifest).
        schedule: default from SOLVER (:func:`schedule_name`).
        images_per_s, device: see :func:`release_metrics`; the device defaults to MODEL.DEVICE.
        model_zoo_md: MODEL_ZOO.md to write the row into; None only returns it.
        date: ISO date of the release, default today.
        half: store the float32 weights as float16.
    """
    canon = canonical_name(name)
    get_config_file(canon)  # an unknown name fails before any work
    checkpoint = checkpoint or os.path.join(train_dir, "model_final.pth")
    config_yaml = config_yaml or os.path.join(train_dir, "config.yaml")
    metrics_file = metrics_file or os.path.join(train_dir, "metrics.json")

    trained_cfg = _load_resolved_config(config_yaml)
    zoo_cfg = get_config(canon)
    _check_config_matches(trained_cfg, zoo_cfg, canon, config_yaml)
    weights = training_weights(checkpoint)
    zoo_cfg.MODEL.WEIGHTS, zoo_cfg.MODEL.DEVICE = "", "cpu"
    check_weights_fit(
        build_model(zoo_cfg).state_dict(), weights,
        f"The weights of {checkpoint} and the model of config {canon} "
        "(fix: release under the config the model was trained with)",
    )
    metrics = release_metrics(
        read_metrics(metrics_file), images_per_s=images_per_s, device=device,
        log_file=os.path.join(train_dir, "log.txt"), default_device=trained_cfg.MODEL.DEVICE,
    )

    # Write the pickle, hash it, then move it under its final name.
    stem = canon[: -len(".yaml")]
    os.makedirs(release_dir, exist_ok=True)
    if half:
        weights = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
    payload = {"model": weights, "__author__": AUTHOR, "matching_heuristics": False}
    record = read_model_metadata(checkpoint)
    if record is not None:  # the weights keep describing themselves (config, class names)
        payload[METADATA_KEY] = record
    fd, tmp = tempfile.mkstemp(dir=release_dir, suffix=".pkl.tmp")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(payload, f, protocol=PICKLE_PROTOCOL)
    sha = sha256_of_file(tmp)
    folder = os.path.join(release_dir, *stem.split("/"), sha[:6])
    os.makedirs(folder, exist_ok=True)
    ckpt_path = os.path.abspath(os.path.join(folder, f"model_final_{sha[:6]}.pkl"))
    os.replace(tmp, ckpt_path)
    cfg_path = os.path.join(folder, "config.yaml")
    shutil.copyfile(config_yaml, cfg_path)
    metrics_path = os.path.join(folder, "metrics.json")
    _write_json(metrics_path, metrics)

    manifest_file = manifest_path(manifest) if manifest is not None else None
    rel = os.path.relpath(ckpt_path, os.path.abspath(release_dir)).replace(os.sep, "/")
    if url_prefix:
        url = url_prefix.rstrip("/") + "/" + rel
    elif manifest_file is not None:
        url = os.path.relpath(ckpt_path, os.path.dirname(manifest_file)).replace(os.sep, "/")
    else:
        url = ckpt_path
    entry = {
        "url": url,
        "sha256": sha,
        "metrics": metrics,
        "date": date or datetime.date.today().isoformat(),
        "schedule": schedule or schedule_name(trained_cfg),
    }
    if manifest_file is not None:
        update_manifest(manifest_file, canon, entry)
    link = url_prefix.rstrip("/") + "/" + rel if url_prefix else _link(ckpt_path, model_zoo_md)
    row = model_zoo_row(canon, entry, link)
    if model_zoo_md is not None:
        update_model_zoo_md(model_zoo_md, canon, row)
    return Release(canon, ckpt_path, os.path.abspath(cfg_path), os.path.abspath(metrics_path), sha,
                   entry, manifest_file, row)


def verify_release(
    name: str, *, manifest: str, dataset: str, expected: Mapping[str, Any],
    device: Optional[str] = None, tolerance: float = 0.05,
) -> Dict[str, Any]:
    """
    Load the released model through the model zoo (``get(name, trained=True)``), evaluate it on
    ``dataset`` and raise ModelZooError unless it reproduces the released ``expected`` metrics
    (a manifest entry's ``metrics``): AP and AP_small within ``tolerance`` AP points, the pixel
    ratio within 0.001. Returns the evaluation results.
    """
    results = evaluate_zoo_model(name, dataset, manifest=manifest, device=device)
    got = {"AP": results["bbox"]["AP"], "AP_small": results["bbox"]["APs"],
           "pixel_ratio": results["autofocus_efficiency"]["pixel_ratio"]}
    tolerances = {"AP": tolerance, "AP_small": tolerance, "pixel_ratio": 1e-3}
    off = [f"{k} {got[k]:.4f} (released {expected[k]:.4f})" for k, tol in tolerances.items()
           if not abs(got[k] - expected[k]) <= tol]
    if off:
        raise ModelZooError(
            f"The released {name}, loaded through the model zoo, does not reproduce its metrics on "
            f"{dataset}: {', '.join(off)}. Fix: release the metrics of an evaluation on {dataset} "
            "with the same config (--metrics), or verify on the dataset they were measured on."
        )
    return results


def evaluate_zoo_model(
    name: str, dataset: str, *, manifest: Optional[str] = None, device: Optional[str] = None,
    trained: bool = True, num_workers: int = 0,
) -> Dict[str, Any]:
    """COCO AP and AutoFocus efficiency of a model zoo model on ``dataset``, as train_net.py's
    evaluation computes them (``inference_on_dataset``)."""
    model = get(name, trained=trained, device=device, manifest=manifest)
    cfg = get_config(name)
    if MetadataCatalog.get(dataset).get("synthetic_split") is not None:
        ensure_split(dataset)  # COCOEvaluator reads the json the split's generation writes
    loader = build_detection_test_loader(cfg, dataset, num_workers=num_workers)
    evaluator = DatasetEvaluators([build_coco_evaluator(dataset), AutoFocusEfficiencyEvaluator()])
    model.eval()
    return inference_on_dataset(model, loader, evaluator)

