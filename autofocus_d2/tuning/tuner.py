"""Pick the FocusChip setting (threshold, dilation, minimum chip) with the fewest pixels whose AP
is within a tolerance of the pyramid's, from one detector pass per image and scale.

:func:`tune_chip_settings` stores every view once (:mod:`.restack`), re-stacks each setting of a
grid offline, compares it with the pyramid by a paired bootstrap over images
(:func:`autofocus_d2.evaluation.paired_ap_difference`) and picks; :func:`confirm_setting` runs the
real pipeline with the pick. ``tools/tune_autofocus.py`` is the command.
"""
import itertools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from detectron2.modeling.postprocessing import detector_postprocess

from ..evaluation.coco import coco_results
from ..evaluation.paired_bootstrap import paired_ap_difference
from ..inference.chip_policies import AutoFocusChipPolicy, ChipPolicy, PyramidChipPolicy, input_gt_boxes
from ..inference.pipeline import CoarseToFinePipeline
from .restack import StoredImage, collect_image, restack_image

__all__ = [
    "ChipSetting",
    "collect_views",
    "setting_grid",
    "evaluate_setting",
    "pick_setting",
    "tune_chip_settings",
    "confirm_setting",
    "config_fragment",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChipSetting:
    """One FocusChip setting, applied to every scale transition: FocusPixel ``threshold``
    (probability), ``dilation`` (cells) and ``min_chip_size`` (pixels of the predicting scale)."""

    threshold: float
    dilation: int
    min_chip_size: float

    def policy(self, num_transitions: int, max_chips: int) -> AutoFocusChipPolicy:
        n = max(1, num_transitions)
        return AutoFocusChipPolicy(thresholds=[self.threshold] * n, dilations=[self.dilation] * n,
                                   min_sizes=[self.min_chip_size] * n, max_chips=max_chips)


def setting_grid(thresholds: Sequence[float], dilations: Sequence[int],
                 min_chip_sizes: Sequence[float]) -> List[ChipSetting]:
    """Every (threshold, dilation, min chip) combination, each value checked."""
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold {t} is not a probability in [0, 1]")
    for d in dilations:
        if int(d) != d or d < 1:
            raise ValueError(f"dilation {d} is not an integer >= 1 (cells)")
    for m in min_chip_sizes:
        if m < 0:
            raise ValueError(f"minimum chip size {m} is negative")
    return [ChipSetting(float(t), int(d), float(m))
            for t, d, m in itertools.product(thresholds, dilations, min_chip_sizes)]


def collect_views(model, pipeline: CoarseToFinePipeline, inputs: Sequence[Dict[str, Any]],
                  progress: Optional[Callable[[str], None]] = None) -> List[StoredImage]:
    """:func:`collect_image` for every input (Detectron2 input dicts with ``image``)."""
    stored = []
    start = time.perf_counter()
    with torch.no_grad():
        for n, x in enumerate(inputs, 1):
            stored.append(collect_image(model, pipeline, x["image"]))
            if progress and (n % 10 == 0 or n == len(inputs)):
                progress(f"stored the views of {n}/{len(inputs)} images ({time.perf_counter() - start:.0f} s)")
    return stored


def _stack_all(stored: Sequence[StoredImage], inputs: Sequence[Dict[str, Any]], pipeline, policy,
               dataset_name: str):
    results, pixels, pyramid = [], 0, 0
    for s, x in zip(stored, inputs):
        gt = input_gt_boxes(x, s.image_hw) if "instances" in x else None
        instances, stats = restack_image(s, pipeline, policy, gt_boxes=gt)
        h, w = x.get("height", s.image_hw[0]), x.get("width", s.image_hw[1])
        results += coco_results(detector_postprocess(instances, h, w), x["image_id"], dataset_name)
        pixels += sum(stats["pixels_per_scale"])
        pyramid += stats["pyramid_pixels"]
    return results, pixels / max(1, pyramid)


def evaluate_setting(coco_gt, results, pyramid_results, *, num_samples: int, seed: int) -> Dict[str, Any]:
    """AP of ``results`` and its paired difference to ``pyramid_results`` with the 95% interval."""
    cmp = paired_ap_difference(coco_gt, results, pyramid_results, num_samples=num_samples, seed=seed)
    return {"AP": cmp["ap_a"], "pyramid_AP": cmp["ap_b"], "AP_diff_vs_pyramid": cmp["diff"],
            "AP_diff_ci95": list(cmp["ci95"])}


def pick_setting(rows: List[Dict[str, Any]], tolerance: float) -> Dict[str, Any]:
    """The row with the fewest pixels whose AP is within ``tolerance`` AP points of the pyramid's
    by the paired interval (its lower bound >= -tolerance). Where no row is, the fewest pixels
    whose point difference is >= -tolerance (``criterion`` says which held); where none is either,
    the most accurate row (``criterion`` "none: most accurate")."""
    by_interval = [r for r in rows if r["AP_diff_ci95"][0] >= -tolerance]
    by_point = [r for r in rows if r["AP_diff_vs_pyramid"] >= -tolerance]
    if by_interval:
        best, criterion = min(by_interval, key=lambda r: (r["pixel_ratio"], -r["AP"])), "interval"
    elif by_point:
        best, criterion = min(by_point, key=lambda r: (r["pixel_ratio"], -r["AP"])), "point"
    else:
        best, criterion = max(rows, key=lambda r: (r["AP"], -r["pixel_ratio"])), "none: most accurate"
    return {**best, "criterion": criterion, "tolerance": tolerance}


def tune_chip_settings(
    model,
    pipeline: CoarseToFinePipeline,
    inputs: Sequence[Dict[str, Any]],
    dataset_name: str,
    coco_gt,
    settings: Sequence[ChipSetting],
    *,
    tolerance: float,
    max_chips: int,
    num_samples: int = 1000,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
    references: Optional[Dict[str, ChipPolicy]] = None,
) -> Dict[str, Any]:
    """Store every view once, re-stack the pyramid and each setting, compare and pick.

    ``references``: further policies by name (e.g. ``{"oracle": OracleChipPolicy(...)}``; inputs
    then need ground truth) re-stacked and compared alike, reported in ``reference_rows``, never
    picked.

    Returns a dict: ``rows`` (one per setting: its fields, ``AP``, ``AP_diff_vs_pyramid``,
    ``AP_diff_ci95``, ``pixel_ratio``), ``pyramid_AP``, ``pick`` (:func:`pick_setting`),
    ``collect_s`` and ``restack_s_per_setting`` (seconds), ``pyramid_results`` (COCO results of
    the re-stacked pyramid: the pipeline's pyramid, same views and detections).
    """
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    stored = collect_views(model, pipeline, inputs, say)
    collect_s = time.perf_counter() - start
    num_transitions = len(pipeline.scale_chain) - 1
    pyramid_results, _ = _stack_all(stored, inputs, pipeline, PyramidChipPolicy(), dataset_name)
    rows = []
    start = time.perf_counter()
    for n, setting in enumerate(settings, 1):
        results, ratio = _stack_all(stored, inputs, pipeline, setting.policy(num_transitions, max_chips),
                                    dataset_name)
        row = {**asdict(setting), "pixel_ratio": ratio,
               **evaluate_setting(coco_gt, results, pyramid_results, num_samples=num_samples, seed=seed)}
        rows.append(row)
        say(f"[{n}/{len(settings)}] threshold {setting.threshold} dilation {setting.dilation} "
            f"min chip {setting.min_chip_size:g}: AP {row['AP']:.2f} ({row['AP_diff_vs_pyramid']:+.2f}, "
            f"95% [{row['AP_diff_ci95'][0]:+.2f}, {row['AP_diff_ci95'][1]:+.2f}]) at "
            f"{ratio:.3f} of the pyramid's pixels")
    restack_s = (time.perf_counter() - start) / max(1, len(settings))
    reference_rows = []
    for name, policy in (references or {}).items():
        results, ratio = _stack_all(stored, inputs, pipeline, policy, dataset_name)
        row = {"method": name, "pixel_ratio": ratio,
               **evaluate_setting(coco_gt, results, pyramid_results, num_samples=num_samples, seed=seed)}
        reference_rows.append(row)
        say(f"{name}: AP {row['AP']:.2f} ({row['AP_diff_vs_pyramid']:+.2f}, 95% [{row['AP_diff_ci95'][0]:+.2f}, "
            f"{row['AP_diff_ci95'][1]:+.2f}]) at {ratio:.3f} of the pyramid's pixels")
    return {"rows": rows, "pyramid_AP": rows[0]["pyramid_AP"] if rows else float("nan"),
            "pick": pick_setting(rows, tolerance), "collect_s": collect_s,
            "restack_s_per_setting": restack_s, "images": len(inputs), "reference_rows": reference_rows,
            "pyramid_results": pyramid_results}


def confirm_setting(model, pipeline_for: Callable[[ChipSetting], CoarseToFinePipeline],
                    setting: ChipSetting, inputs: Sequence[Dict[str, Any]], dataset_name: str,
                    coco_gt, pyramid_results: List[Dict[str, Any]],
                    *, num_samples: int = 1000, seed: int = 0) -> Dict[str, Any]:
    """Run the real pipeline (``pipeline_for(setting)``) over ``inputs`` and evaluate it against the
    pyramid's COCO results as :func:`evaluate_setting`; also its pixel ratio."""
    pipeline = pipeline_for(setting)
    results, pixels, pyramid = [], 0, 0
    with torch.no_grad():
        for x in inputs:
            out = pipeline(model, [x])[0]
            results += coco_results(out["instances"], x["image_id"], dataset_name)
            pixels += sum(out["autofocus"]["pixels_per_scale"])
            pyramid += sum(out["autofocus"]["pyramid_pixels_per_scale"])
    row = evaluate_setting(coco_gt, results, pyramid_results, num_samples=num_samples, seed=seed)
    return {**row, "pixel_ratio": pixels / max(1, pyramid)}


def config_fragment(setting: ChipSetting, comment_lines: Sequence[str]) -> str:
    """A yaml fragment setting MODEL.AUTOFOCUS's chip keys to ``setting``, with comment lines."""
    head = "".join(f"# {line}\n" for line in comment_lines)
    return (f"{head}MODEL:\n  AUTOFOCUS:\n"
            f"    FOCUS_THRESHOLD: [{setting.threshold:g}]\n"
            f"    DILATION: [{setting.dilation}]\n"
            f"    MIN_CHIP_SIZE: [{setting.min_chip_size:g}]\n")
