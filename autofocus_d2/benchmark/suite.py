"""run_benchmark: every method and the AutoFocus threshold sweep, interleaved, on one model and image set."""
import datetime
import logging
import platform
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.modeling import build_model

from ..checkpoint import load_weights
from ..evaluation import load_coco_ground_truth
from ..evaluation.detection_cap import detection_cap, results_at_cap, score_floor
from ..inference.chip_policies import (
    CHIP_POLICY_REGISTRY,
    OracleChipPolicy,
    build_chip_policy,
    policy_names,
)
from .comparison import add_ap_differences, is_builtin_dataset, run_warnings, scale0_agreement
from .report import add_ratios, check_targets
from .runner import load_inputs, measure_methods, pipeline_method
from .sahi_method import parse_sahi_method, sahi_method
from .tta_method import tta_method

__all__ = ["DEFAULT_METHODS", "TIMING_METHODS", "available_methods", "build_method", "run_benchmark"]

logger = logging.getLogger(__name__)

# sahi: matched to AutoFocus's finest chips; sahi@S: SAHI as its users run it (S x S slices,
# sahi@512 is SAHI's default); tta: Detectron2's GeneralizedRCNNWithTTA over the scale chain.
# oracle: the same chips from ground-truth FocusPixels (AutoFocus's upper bound).
DEFAULT_METHODS = ("single", "pyramid", "grid", "autofocus", "oracle", "sahi", "sahi@512", "sahi@256",
                   "sahi@768", "tta")
# --timing-only (random init): the pipeline's policies, the oracle where it is registered.
TIMING_METHODS = ("single", "pyramid", "grid", "autofocus", "oracle")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def available_methods() -> List[str]:
    """The method names ``run_benchmark`` accepts: every chip policy (short names and the class
    names of CHIP_POLICY_REGISTRY), ``sahi``, ``sahi@S`` (S a slice side in pixels) and ``tta``."""
    names = set(policy_names()) | {name for name, _ in CHIP_POLICY_REGISTRY}
    return sorted(names) + ["sahi", "sahi@S", "tta"]


def _is_policy(name: str) -> bool:
    return name in policy_names() or name in CHIP_POLICY_REGISTRY


def check_methods(methods: Sequence[str]) -> None:
    """Raise ValueError naming every unknown method."""
    unknown = []
    for name in methods:
        if name.startswith("sahi"):
            try:
                parse_sahi_method(name)
            except ValueError:
                unknown.append(name)
        elif name != "tta" and not _is_policy(name):
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {available_methods()}")


def _needs_ground_truth(cfg, name: str) -> bool:
    """Whether chip policy ``name`` reads the ground truth: its ``needs_ground_truth`` attribute,
    by default True for the oracle policy only."""
    if not _is_policy(name):
        return False
    c = cfg.clone()
    c.defrost()
    c.MODEL.AUTOFOCUS.CHIP_POLICY = name
    policy = build_chip_policy(c)
    return bool(getattr(policy, "needs_ground_truth", isinstance(policy, OracleChipPolicy)))


def build_method(name: str, model, cfg) -> Callable:
    """The predict function of method ``name`` (see :func:`available_methods`) on ``model``."""
    if name.startswith("sahi"):
        return sahi_method(model, cfg, name)
    if name == "tta":
        return tta_method(model, cfg)
    return pipeline_method(model, cfg, name)


def run_benchmark(
    cfg,
    *,
    dataset_name: str,
    methods: Sequence[str] = DEFAULT_METHODS,
    sweep: Sequence[float] = (),
    max_images: Optional[int] = None,
    warmup: int = 1,
    repeats: int = 3,
    progress: bool = True,
    timing_only: bool = False,
    bootstrap_samples: int = 1000,
) -> Dict[str, Any]:
    """Measure ``methods`` and the FOCUS_THRESHOLD ``sweep`` of autofocus with ``cfg``'s model and
    MODEL.WEIGHTS on the first ``max_images`` images of ``dataset_name``; return the report dict.

    Timing: every image goes through every method (and sweep setting) in rotating order, in
    ``repeats`` passes over the images (sweep settings in the first pass only); medians over
    repeats, time ratios per repeat with their spread (:func:`measure_methods`,
    :func:`add_ratios`). AP from the first pass, and each method's AP difference to the pyramid
    with its paired bootstrap interval over images (``bootstrap_samples`` resamples). The demo's
    targets are checked on the built-in dataset only. The report's ``detections`` (each method's
    COCO results) are written by :func:`write_report`.

    ``timing_only``: random init (MODEL.WEIGHTS is not loaded), no AP (NaN): pixels, time and the
    time split only -- to measure speed before (or without) training."""
    check_methods(methods)
    model = build_model(cfg).eval()
    if timing_only:
        logger.info("timing-only: randomly initialised weights (MODEL.WEIGHTS %r not loaded)", cfg.MODEL.WEIGHTS)
    else:
        if not cfg.MODEL.WEIGHTS:
            logger.warning("MODEL.WEIGHTS is empty: benchmarking randomly initialised weights")
        load_weights(model, cfg.MODEL.WEIGHTS)  # weights that do not fit the model are an error
    device = model.device
    with_gt = any(_needs_ground_truth(cfg, name) for name in methods)
    inputs = load_inputs(cfg, dataset_name, max_images, with_ground_truth=with_gt)

    entries: List[Tuple[str, Callable]] = []
    skipped: Dict[str, str] = {}
    for name in methods:
        try:
            entries.append((name, build_method(name, model, cfg)))
        except ImportError as e:
            skipped[name] = str(e)
            print(f"[benchmark] skipping {name}: {e}", flush=True)
    sweep_entries = [(f"autofocus@{t:g}", pipeline_method(model, cfg, "autofocus", FOCUS_THRESHOLD=[float(t)]))
                     for t in sweep]
    print(f"[benchmark] {len(entries)} methods + {len(sweep_entries)} sweep settings on {len(inputs)} images, "
          f"interleaved, {repeats} timed passes (sweep: 1)", flush=True)
    all_rows, results = measure_methods(
        entries + sweep_entries, inputs, dataset_name=dataset_name, device=device, warmup=warmup,
        repeats=repeats, repeats_of={name: 1 for name, _ in sweep_entries}, progress=progress,
        evaluate=not timing_only, mask_on=cfg.MODEL.MASK_ON)
    rows, sweep_rows = all_rows[:len(entries)], all_rows[len(entries):]
    for r, t in zip(sweep_rows, sweep):
        r["threshold"] = float(t)
    add_ratios(rows)
    add_ratios(sweep_rows, pyramid=next((r for r in rows if r["method"] == "pyramid"), None))
    if not timing_only:
        print(f"[benchmark] paired bootstrap of AP differences ({bootstrap_samples} resamples)", flush=True)
        add_ap_differences(all_rows, results, load_coco_ground_truth(dataset_name),
                           [x["image_id"] for x in inputs], num_samples=bootstrap_samples)
    scale0 = scale0_agreement(all_rows, [name for name, _ in entries if _is_policy(name)]
                              + [name for name, _ in sweep_entries])
    builtin = is_builtin_dataset(dataset_name)

    return {
        "dataset": dataset_name,
        "images": len(inputs),
        "config": cfg.get("_source_file", ""),
        "weights": "(random init: timing only)" if timing_only else cfg.MODEL.WEIGHTS,
        "timing_only": bool(timing_only),
        "device": device_name(device),
        "date": datetime.date.today().isoformat(),
        "warmup": warmup,
        "repeats": repeats,
        "bootstrap_samples": 0 if timing_only else bootstrap_samples,
        "autofocus": {
            "scales": [list(sc) for sc in cfg.MODEL.AUTOFOCUS.SCALES],
            "view_detections": cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS,
            "nms_method": cfg.MODEL.AUTOFOCUS.NMS_METHOD,
            "focus_threshold": list(cfg.MODEL.AUTOFOCUS.FOCUS_THRESHOLD),
        },
        "methods": rows,
        "skipped": skipped,
        "sweep": sweep_rows,
        "scale0_agreement": scale0,
        # Dense scenes: methods whose predictions reach TEST.DETECTIONS_PER_IMAGE, said once each
        # (summary_text prints the warnings).
        "warnings": run_warnings(len(inputs), scale0)
        + results_at_cap(results or {}, len(inputs), detection_cap(cfg), score_floor(cfg)),
        "targets_checked": builtin,
        "targets": check_targets(rows) if builtin else [],
        "detections": results,
    }
