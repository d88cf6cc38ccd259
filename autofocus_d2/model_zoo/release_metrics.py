"""The metrics of a model zoo row: read from Detectron2's training outputs (``metrics.json``,
evaluation results, the ``log.txt`` timing line) and checked for completeness."""
import json
import os
import re
from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np

from .model_zoo import ModelZooError

__all__ = ["read_metrics", "inference_speed_from_log", "release_metrics"]


def flatten_mapping(d: Mapping, prefix: str = "", sep: str = "/") -> Dict[str, Any]:
    """Nested mappings (a CfgNode too) as one level: {"a": {"b": 1}} -> {"a/b": 1} (with ``sep``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_mapping(v, key + sep, sep))
        else:
            out[key] = v
    return out


def read_metrics(path: str) -> Dict[str, Any]:
    """
    Flat metrics (``"bbox/AP"``, ``"autofocus_efficiency/pixel_ratio"``, ...) from either
    Detectron2's ``metrics.json`` (JSON lines; the last line holding ``bbox/AP`` wins, as the final
    evaluation of DefaultTrainer writes it) or a JSON object such as the (nested) results that
    ``DefaultTrainer.test`` returns.
    """
    if not os.path.isfile(path):
        raise ModelZooError(
            f"Metrics file {path} does not exist. Fix: evaluate the model (train_net.py evaluates "
            "at the end of training and writes metrics.json; or save the results of "
            "train_net.py --eval-only as JSON) and pass it with --metrics."
        )
    with open(path) as f:
        text = f.read()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return flatten_mapping(whole)
    found = None
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ModelZooError(f"Metrics file {path}, line {i + 1}: not JSON ({e})") from e
        flat = flatten_mapping(record) if isinstance(record, dict) else {}
        if "bbox/AP" in flat:
            found = flat
    if found is None:
        raise ModelZooError(
            f"Metrics file {path} holds no 'bbox/AP'. Fix: evaluate the model on its test set "
            "(train_net.py --eval-only) and pass the results with --metrics."
        )
    return found


_SPEED_RE = re.compile(
    r"Total inference pure compute time: \S+ \(([0-9.]+) s / iter per device, on (\d+) devices\)"
)


def inference_speed_from_log(log_file: str) -> Optional[float]:
    """Images per second per device of the last evaluation logged by Detectron2's
    ``inference_on_dataset`` in ``log_file`` (its "pure compute time", one image per iteration),
    or None if the log has no such line."""
    if not os.path.isfile(log_file):
        return None
    speed = None
    with open(log_file, errors="replace") as f:
        for line in f:
            m = _SPEED_RE.search(line)
            if m and float(m.group(1)) > 0:
                speed = 1.0 / float(m.group(1))
    return speed


def _first(flat: Mapping[str, Any], keys: Iterable[str]):
    for k in keys:
        if flat.get(k) is not None:
            return flat[k]
    return None


def release_metrics(
    flat: Mapping[str, Any],
    *,
    images_per_s: Optional[float] = None,
    device: Optional[str] = None,
    log_file: Optional[str] = None,
    default_device: Optional[str] = None,
) -> Dict[str, Any]:
    """
    The manifest's ``metrics``: ``AP`` and ``AP_small`` (COCO bbox AP and APs, in %),
    ``pixel_ratio`` (pixels processed / full pyramid's), ``images_per_s`` (per device) and
    ``device``. Each comes from the argument when given, else from ``flat`` (see
    :func:`read_metrics`; ``images_per_s`` and ``device`` keys may also be there), else — speed
    only — from Detectron2's log line in ``log_file``, and the device from ``default_device``.
    Raises ModelZooError naming what is missing and how to supply it.
    """
    ap = _first(flat, ["bbox/AP", "AP"])
    ap_small = _first(flat, ["bbox/APs", "AP_small"])
    ratio = _first(flat, ["autofocus_efficiency/pixel_ratio", "pixel_ratio"])
    if images_per_s is None:
        images_per_s = _first(flat, ["images_per_s", "speed/images_per_s"])
    if images_per_s is None and log_file is not None:
        images_per_s = inference_speed_from_log(log_file)
    if device is None:
        device = _first(flat, ["device", "speed/device"]) or default_device
    missing = [
        what for what, value in (
            ("AP (bbox/AP)", ap), ("AP_small (bbox/APs)", ap_small),
            ("pixel_ratio (autofocus_efficiency/pixel_ratio)", ratio),
            ("images_per_s (--images-per-s, or Detectron2's 'Total inference pure compute time' "
             "line in the training log.txt)", images_per_s),
            ("device (--device)", device),
        ) if value is None
    ]
    if missing:
        raise ModelZooError(
            "Cannot release without these metrics: " + "; ".join(missing) + ". Fix: evaluate with "
            "train_net.py (COCOEvaluator + AutoFocusEfficiencyEvaluator) and pass its results "
            "with --metrics, or give the value on the command line."
        )
    values = {"AP": ap, "AP_small": ap_small, "pixel_ratio": ratio, "images_per_s": images_per_s}
    for k, v in values.items():
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ModelZooError(f"Metric {k} must be a finite number, got {v!r}")
    return {**{k: float(v) for k, v in values.items()}, "device": str(device)}
