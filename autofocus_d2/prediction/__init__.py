"""Prediction over a collection of images: several processes or GPUs (Detectron2's ``launch``),
one JSON per image, resumable. ``tools/predict.py`` is its command line; docs/predict.md."""
from .inputs import PredictionInput, PredictionMapper, UnreadableImageError, collect_inputs, read_input_image
from .outputs import (
    coco_results, image_detections, model_fingerprint, pending_inputs, prediction_path, read_complete_record)
from .runner import PredictOptions, ProgressLog, predict, predict_worker
from .sharding import build_prediction_loader, shard_indices

__all__ = [
    "image_detections",
    "PredictionInput",
    "PredictionMapper",
    "UnreadableImageError",
    "collect_inputs",
    "read_input_image",
    "coco_results",
    "model_fingerprint",
    "pending_inputs",
    "prediction_path",
    "read_complete_record",
    "PredictOptions",
    "ProgressLog",
    "predict",
    "predict_worker",
    "build_prediction_loader",
    "shard_indices",
]
