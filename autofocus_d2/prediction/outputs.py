"""What a prediction run writes, and how a rerun knows what is already done.

Layout of the output folder (docs/predict.md)::

    predictions/<key>.json        one per image (``key``: the input's path relative to the
                                  common folder of all inputs), see :func:`prediction_record`
    failures.json                 this run's failed inputs: [{"file_name", "key", "reason"}]
    coco_instances_results.json   (on request) every image's detections in COCO results format
    summary.json                  this run's figures (images/s, pixels, failures...)
    log.txt, log.txt.rank<R>      Detectron2's log of each process

Every file is written atomically: to a temporary file in the same folder, then renamed over the
destination, so a reader (or a rerun after a kill) never sees a partial file.
"""
import hashlib
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.file_io import PathManager

from ..model_zoo.model_zoo import sha256_of_file
from .inputs import PredictionInput

__all__ = [
    "OUTPUT_FORMAT",
    "model_fingerprint",
    "prediction_path",
    "prediction_record",
    "read_complete_record",
    "pending_inputs",
    "coco_results",
    "image_detections",
]

# Stored in every per-image output and part of the fingerprint: a change of the layout redoes all.
OUTPUT_FORMAT = "autofocus_d2.prediction/1"
PREDICTIONS_DIR = "predictions"


# The config sections that decide the predictions (the data loader, solver, output folder... do not).
FINGERPRINT_SECTIONS = ("MODEL", "INPUT", "TEST")


def model_fingerprint(cfg) -> str:
    """
    sha256 of what decides the predictions: the weights file's sha256, the config's
    :data:`FINGERPRINT_SECTIONS` (their YAML dump) without ``MODEL.WEIGHTS`` (the file's content
    counts, not its path) and ``MODEL.DEVICE`` (a run may resume on another device; CPU and CUDA
    agree up to float rounding), and :data:`OUTPUT_FORMAT`.

    Raises:
        ValueError: ``MODEL.WEIGHTS`` is empty (a random-init model differs per process and per run).
        FileNotFoundError: the weights file does not exist.
    """
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: predictions need trained weights (a random-init "
                         "model would differ in every process and every run)")
    local = PathManager.get_local_path(cfg.MODEL.WEIGHTS)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r}: no such file")
    sections = type(cfg)({name: cfg[name].clone() for name in FINGERPRINT_SECTIONS})
    sections.MODEL.WEIGHTS = ""
    sections.MODEL.DEVICE = ""
    digest = hashlib.sha256()
    for part in (OUTPUT_FORMAT, sha256_of_file(local), sections.dump()):
        digest.update(part.encode("utf-8") + b"\0")
    return digest.hexdigest()


def prediction_path(output_dir: str, item: PredictionInput) -> str:
    """``<output_dir>/predictions/<key>.json``."""
    return os.path.join(output_dir, PREDICTIONS_DIR, item.key + ".json")


def prediction_record(
    item: PredictionInput,
    output: Dict[str, Any],
    height: int,
    width: int,
    fingerprint: str,
    thing_classes: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """
    The per-image output of one model output dict (``instances`` in the original frame,
    ``autofocus`` stats). Instances as Detectron2's COCO results (``instances_to_coco_json``):
    ``bbox`` XYWH in original pixels, ``score``, ``category_id`` (the model's contiguous class),
    ``segmentation`` (COCO RLE) when the model predicts masks, ``keypoints`` when it predicts them;
    plus ``category_name`` from ``thing_classes`` when given. ``autofocus``: pixels and chips per
    scale, chip boxes (XYXY, original pixels) and the full pyramid's pixels per scale.
    """
    instances = output["instances"].to("cpu")
    detections = instances_to_coco_json(instances, item.image_id)
    for d in detections:
        d.pop("image_id")
        if thing_classes is not None:
            d["category_name"] = thing_classes[d["category_id"]]
    stats = output.get("autofocus", {})
    return {
        "format": OUTPUT_FORMAT,
        "fingerprint": fingerprint,
        "file_name": item.file_name,
        "key": item.key,
        "image_id": item.image_id,
        "height": int(height),
        "width": int(width),
        "instances": detections,
        "autofocus": {k: stats[k] for k in ("pixels_per_scale", "chips_per_scale",
                                            "chip_boxes_per_scale", "pyramid_pixels_per_scale")
                      if k in stats},
    }


def read_complete_record(path: str, fingerprint: str) -> Optional[Dict[str, Any]]:
    """The output at ``path`` if it is complete (valid JSON of :data:`OUTPUT_FORMAT` with every
    field) and made by the model of ``fingerprint``; None otherwise (missing, truncated, another
    model or config)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != OUTPUT_FORMAT:
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    if not {"file_name", "image_id", "height", "width", "instances", "autofocus"} <= set(record):
        return None
    return record


def pending_inputs(
    inputs: Sequence[PredictionInput], output_dir: str, fingerprint: str, overwrite: bool = False
) -> List[int]:
    """Indices of the inputs still to predict: all with ``overwrite``, else those without a complete
    output of this fingerprint."""
    if overwrite:
        return list(range(len(inputs)))
    return [i for i, item in enumerate(inputs)
            if read_complete_record(prediction_path(output_dir, item), fingerprint) is None]


def coco_results(
    records: Iterable[Dict[str, Any]], dataset_id_to_contiguous_id: Optional[Dict[int, int]] = None
) -> List[Dict[str, Any]]:
    """
    Detections of the per-image ``records`` in COCO results format (``image_id``, ``category_id``,
    ``bbox`` XYWH, ``score``, and ``segmentation``/``keypoints`` when present), as Detectron2's
    ``COCOEvaluator`` writes them: category ids mapped back to the dataset's through
    ``dataset_id_to_contiguous_id`` (the metadata's ``thing_dataset_id_to_contiguous_id``) when
    given, else the model's contiguous ids.
    """
    to_dataset = None
    if dataset_id_to_contiguous_id:
        to_dataset = {v: k for k, v in dataset_id_to_contiguous_id.items()}
    results = []
    for record in records:
        for d in record["instances"]:
            r = {k: v for k, v in d.items() if k != "category_name"}
            r["image_id"] = record["image_id"]
            if to_dataset is not None:
                contiguous = r["category_id"]
                if contiguous not in to_dataset:
                    raise ValueError(f"{record['file_name']}: class {contiguous} is not in the "
                                     "dataset's thing_dataset_id_to_contiguous_id")
                r["category_id"] = to_dataset[contiguous]
            results.append(r)
    return results


def image_detections(
    file_name: str,
    instances,
    height: int,
    width: int,
    thing_classes: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """
    One image's detections as ``demo.py`` writes them (``<name>.json`` beside its pictures):
    ``{"file_name", "height", "width", "instances": [...]}``, each instance as Detectron2's COCO
    results (``instances_to_coco_json``): ``bbox`` XYWH in original-image pixels, ``score``,
    ``category_id`` (the model's contiguous class), ``segmentation`` when the model predicts masks;
    plus ``category_name`` from ``thing_classes`` when given.

    Args:
        instances: ``pred_boxes``/``scores``/``pred_classes`` in the frame of the ORIGINAL image
            (``height`` x ``width``), e.g. after ``detector_postprocess``.
    """
    if tuple(instances.image_size) != (int(height), int(width)):
        raise ValueError(f"instances of an image of {tuple(instances.image_size)} px, not of the "
                         f"original ({height}, {width}): map them to the original frame first")
    detections = instances_to_coco_json(instances.to("cpu"), 0)
    for d in detections:
        d.pop("image_id")
        if thing_classes is not None:
            d["category_name"] = thing_classes[d["category_id"]]
    return {"file_name": file_name, "height": int(height), "width": int(width), "instances": detections}
