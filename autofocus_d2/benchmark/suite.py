"""run_benchmark: every method, then the AutoFocus threshold sweep, on one model and image set."""
import datetime
import logging
import platform
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from .report import add_ratios, check_targets
from .runner import load_inputs, measure_method, pipeline_method, sahi_method

__all__ = ["DEFAULT_METHODS", "run_benchmark"]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("single", "pyramid", "grid", "autofocus", "sahi")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_benchmark(
    cfg,
    *,
    dataset_name: str,
    methods: Sequence[str] = DEFAULT_METHODS,
    sweep: Sequence[float] = (),
    max_images: Optional[int] = None,
    warmup: int = 1,
    progress: bool = True,
) -> Dict[str, Any]:
    """Measure ``methods`` and the FOCUS_THRESHOLD ``sweep`` of autofocus with ``cfg``'s model and
    MODEL.WEIGHTS on the first ``max_images`` images of ``dataset_name``; return the report dict."""
    unknown = set(methods) - set(DEFAULT_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(DEFAULT_METHODS)}")
    model = build_model(cfg).eval()
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: benchmarking randomly initialised weights")
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    device = model.device
    inputs = load_inputs(cfg, dataset_name, max_images)

    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    for name in methods:
        try:
            predict = sahi_method(model, cfg) if name == "sahi" else pipeline_method(model, cfg, name)
        except ImportError as e:
            skipped[name] = str(e)
            print(f"[benchmark] skipping {name}: {e}", flush=True)
            continue
        rows.append(measure_method(name, predict, inputs, dataset_name=dataset_name, device=device,
                                   warmup=warmup, progress=progress))
    add_ratios(rows)
    pyramid = next((r for r in rows if r["method"] == "pyramid"), None)

    sweep_rows = []
    for t in sweep:
        predict = pipeline_method(model, cfg, "autofocus", FOCUS_THRESHOLD=[float(t)])
        r = measure_method(f"autofocus@{t:g}", predict, inputs, dataset_name=dataset_name,
                           device=device, warmup=0, progress=progress)
        r["threshold"] = float(t)
        sweep_rows.append(r)
    if pyramid is not None:
        for r in sweep_rows:
            r["pixel_ratio"] = r["pixels_per_image"] / pyramid["pixels_per_image"]
            r["time_ratio"] = r["median_time_s"] / pyramid["median_time_s"]
    else:
        for r in sweep_rows:
            r["pixel_ratio"] = r["pixels_per_image"] / r["pyramid_pixels_per_image"]
            r["time_ratio"] = float("nan")

    return {
        "dataset": dataset_name,
        "images": len(inputs),
        "config": cfg.get("_source_file", ""),
        "weights": cfg.MODEL.WEIGHTS,
        "device": device_name(device),
        "date": datetime.date.today().isoformat(),
        "warmup": warmup,
        "autofocus": {
            "scales": [list(sc) for sc in cfg.MODEL.AUTOFOCUS.SCALES],
            "view_detections": cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS,
            "nms_method": cfg.MODEL.AUTOFOCUS.NMS_METHOD,
            "focus_threshold": list(cfg.MODEL.AUTOFOCUS.FOCUS_THRESHOLD),
        },
        "methods": rows,
        "skipped": skipped,
        "sweep": sweep_rows,
        "targets": check_targets(rows),
    }
