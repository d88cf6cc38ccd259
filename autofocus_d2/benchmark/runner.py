"""Side-by-side measurement of inference methods on one set of weights.

Every method sees the same images, in the same process, after a warm-up: ``single``, ``pyramid``,
``grid`` and ``autofocus`` are chip policies of the one pipeline; ``sahi`` is SAHI's sliced
inference over the same detector. Per method: COCO AP (Detectron2's COCOEvaluator), pixels and
chips per image, median wall time per image and peak memory.
"""
import contextlib
import copy
import io
import logging
import os
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, DatasetMapper

from ..evaluation import build_coco_evaluator
from ..inference.pipeline import build_autofocus_pipeline

__all__ = ["MemoryMeter", "load_inputs", "measure_method", "pipeline_method", "sahi_method"]

logger = logging.getLogger(__name__)


class MemoryMeter:
    """Peak memory of a block: CUDA max allocated on CUDA, else the process's peak RSS (Linux
    resets the peak through /proc/self/clear_refs; elsewhere the process-wide peak is reported)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/clear_refs"):
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_inputs(cfg, dataset_name: str, max_images: Optional[int] = None) -> List[Dict[str, Any]]:
    """The dataset's test inputs as Detectron2's test mapper makes them (original resolution when
    INPUT.MIN_SIZE_TEST is 0), the first ``max_images`` of them."""
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {dataset_name!r} is not registered; registered: {sorted(DatasetCatalog.list())}"
        )
    dicts = DatasetCatalog.get(dataset_name)
    if max_images is not None:
        dicts = dicts[:max_images]
    if not dicts:
        raise ValueError(f"dataset {dataset_name!r} has no images")
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(copy.deepcopy(d)) for d in dicts]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_method(
    name: str,
    predict: Callable[[Dict[str, Any]], Dict[str, Any]],
    inputs: Sequence[Dict[str, Any]],
    *,
    dataset_name: str,
    device: torch.device,
    warmup: int = 1,
    progress: bool = True,
) -> Dict[str, Any]:
    """Run ``predict`` (one input dict -> output dict with ``instances`` and ``autofocus``) on every
    input; return AP figures, pixels/chips per image, median time per image and peak memory."""
    from tqdm import tqdm

    device = torch.device(device)
    with torch.no_grad():
        for x in inputs[:warmup]:
            predict(x)
        _sync(device)
        meter = MemoryMeter(device)
        meter.reset()
        evaluator = build_coco_evaluator(dataset_name)
        evaluator._distributed = False
        evaluator.reset()
        times, pixels, chips, pyramid, per_scale = [], [], [], [], []
        for x in tqdm(inputs, desc=f"{name:>12s}", disable=not progress, leave=False):
            _sync(device)
            start = time.perf_counter()
            out = predict(x)
            _sync(device)
            times.append(time.perf_counter() - start)
            stats = out["autofocus"]
            pixels.append(sum(stats["pixels_per_scale"]))
            chips.append(sum(stats["chips_per_scale"][1:]))
            pyramid.append(sum(stats["pyramid_pixels_per_scale"]))
            per_scale.append(stats["pixels_per_scale"])
            out = {"instances": out["instances"].to("cpu")}
            evaluator.process([x], [out])
        peak = meter.peak_mb()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own tables
        results = evaluator.evaluate(img_ids=[x["image_id"] for x in inputs]) or {}
    bbox = results.get("bbox", {})
    num_scales = max(len(p) for p in per_scale)
    return {
        "method": name,
        "AP": bbox.get("AP", float("nan")),
        "AP50": bbox.get("AP50", float("nan")),
        "APs": bbox.get("APs", float("nan")),
        "APm": bbox.get("APm", float("nan")),
        "APl": bbox.get("APl", float("nan")),
        "pixels_per_image": sum(pixels) / len(pixels),
        "pyramid_pixels_per_image": sum(pyramid) / len(pyramid),
        "pixels_per_scale": [
            sum(p[k] if k < len(p) else 0 for p in per_scale) / len(per_scale) for k in range(num_scales)
        ],
        "chips_per_image": sum(chips) / len(chips),
        "median_time_s": statistics.median(times),
        "peak_memory_mb": peak,
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "images": len(inputs),
    }


def pipeline_method(model, cfg, policy: str, **autofocus_overrides) -> Callable:
    """A predict function running ``model`` (same weights) with chip policy ``policy`` and other
    MODEL.AUTOFOCUS keys overridden (e.g. FOCUS_THRESHOLD=[0.3])."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.AUTOFOCUS.CHIP_POLICY = policy
    for key, value in autofocus_overrides.items():
        setattr(cfg.MODEL.AUTOFOCUS, key, value)
    pipeline = build_autofocus_pipeline(cfg)

    def predict(x):
        return pipeline(model, [x])[0]

    return predict


def sahi_method(model, cfg) -> Callable:
    """A predict function running SAHI's sliced inference with the same detector module, slices
    matching the finest scale's chips (see autofocus_d2.evaluation.sahi_baseline), SAHI's
    whole-image pass, and SAHI's class-wise NMS merge at our final NMS threshold, keeping the
    ``DETECTIONS_PER_IMAGE`` best like every other method. (SAHI's GREEDYNMM merge fuses
    neighbouring small objects of a cluster into one box, and SAHI switches to NMS by itself below
    a confidence of 0.1 anyway.) Raises ImportError when SAHI is absent."""
    from ..evaluation import sahi_baseline

    ok, reason = sahi_baseline.sahi_available()
    if not ok:
        raise ImportError(reason)
    sahi_model = sahi_baseline.AutoFocusSahiModel(
        cfg, model=model, confidence_threshold=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    )
    pipeline = build_autofocus_pipeline(cfg)

    def predict(x):
        image = x["image"].permute(1, 2, 0).numpy()  # HWC, in the model's INPUT.FORMAT
        h, w = image.shape[:2]
        params = sahi_baseline.sahi_slice_params(cfg, (h, w))
        result = sahi_baseline.run_sahi(
            sahi_model, image, slice_size=params.slice_size, overlap=params.overlap,
            zoom=params.zoom, confidence=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            postprocess_type="NMS", postprocess_match_metric="IOU",
            postprocess_match_threshold=cfg.MODEL.AUTOFOCUS.NMS_THRESH, force_postprocess_type=True,
        )
        instances = result.instances
        keep = torch.argsort(instances.scores, descending=True)[: cfg.MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE]
        return {
            "instances": instances[keep],
            "autofocus": {
                "pixels_per_scale": [result.standard_pixels, result.slice_pixels],
                "chips_per_scale": [1 if result.standard_pixels else 0, result.num_slices],
                "pyramid_pixels_per_scale": pipeline.pyramid_pixels((h, w)),
            },
        }

    return predict
