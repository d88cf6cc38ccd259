"""How sure the benchmark's comparisons are: paired bootstrap intervals of each method's AP
difference to the pyramid, the agreement of identical scale-0 passes across methods, and the
warnings a report carries (a small split, timings that disagree).

Every figure here is about the run itself, not about a target: the report gives them on any data.
"""
import logging
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..evaluation.paired_bootstrap import PerImageMatches, bootstrap_counts, difference_interval

__all__ = [
    "BUILTIN_DATASET_PREFIX",
    "MIN_IMAGES",
    "SCALE0_TOLERANCE",
    "add_ap_differences",
    "is_builtin_dataset",
    "run_warnings",
    "scale0_agreement",
]

logger = logging.getLogger(__name__)

BUILTIN_DATASET_PREFIX = "autofocus_synth_"  # the built-in dataset, whose demo targets the report checks
MIN_IMAGES = 10  # fewer images than this: the report warns that its differences say little
SCALE0_TOLERANCE = 0.10  # identical scale-0 passes may differ by this fraction between methods


def is_builtin_dataset(dataset_name: str) -> bool:
    """Whether ``dataset_name`` is a split of the built-in synthetic dataset (the one the demo's
    targets were set for)."""
    return dataset_name.startswith(BUILTIN_DATASET_PREFIX)


def add_ap_differences(
    rows: Sequence[Dict[str, Any]],
    results: Dict[str, List[Dict[str, Any]]],
    coco_gt,
    image_ids: Sequence[int],
    *,
    reference: str = "pyramid",
    num_samples: int = 1000,
    seed: int = 0,
) -> None:
    """
    Add to each row (in place) ``AP_diff_vs_pyramid`` (box AP of the row's method minus the
    ``reference`` method's, in AP points, on ``image_ids``) and ``AP_diff_ci95`` ([low, high], the
    paired bootstrap 95% interval over images: the same ``num_samples`` resamples of
    ``image_ids`` for every row). ``results``: each method's COCO results list, by method name.
    Rows without results, or all rows when the reference has none, get NaN and [NaN, NaN].
    """
    nan = float("nan")
    if reference not in results:
        for r in rows:
            r["AP_diff_vs_pyramid"], r["AP_diff_ci95"] = nan, [nan, nan]
        return
    ref = PerImageMatches(coco_gt, results[reference], image_ids=image_ids)
    counts = bootstrap_counts(len(ref.image_ids), num_samples, seed)
    ref_ap, ref_samples = float(ref.ap()[0]), ref.ap(counts)
    for r in rows:
        if r["method"] not in results:
            r["AP_diff_vs_pyramid"], r["AP_diff_ci95"] = nan, [nan, nan]
            continue
        m = ref if r["method"] == reference else PerImageMatches(coco_gt, results[r["method"]], image_ids=image_ids)
        r["AP_diff_vs_pyramid"] = float(m.ap()[0]) - ref_ap
        r["AP_diff_ci95"] = difference_interval(m.ap(counts), ref_samples)


def scale0_agreement(rows: Sequence[Dict[str, Any]], methods: Sequence[str]) -> Optional[Dict[str, Any]]:
    """
    Whether ``methods`` (rows by ``method``; the ones whose scale-0 pass is the same computation,
    e.g. the pipeline's chip policies) timed their scale-0 pass alike, pass by pass.

    Per timed pass, the largest over the smallest scale-0 detector ms per Mpix of the methods timed
    in that pass (``repeat_scale0_ms_per_mpix``; a row without it counts as one pass): the machine's
    drift between passes cancels, what remains is how differently the same work was timed within
    a pass. Returns ``ms_per_mpix`` (each method's median over its passes),
    ``per_pass_max_over_min``, ``max_over_min`` (their median), ``tolerance`` and ``flagged``
    (``max_over_min`` above 1 + SCALE0_TOLERANCE: that much of any time ratio of the run is then
    noise, or the methods' scale-0 passes are not the same work); None when no pass timed two of them.
    """
    def valid(v) -> bool:
        return v is not None and bool(np.isfinite(v)) and v > 0

    per_method = {}
    for r in rows:
        if r["method"] in set(methods):
            per_method[r["method"]] = list(r.get("repeat_scale0_ms_per_mpix") or [r.get("scale0_ms_per_mpix")])
    per_pass = []
    for p in range(max((len(v) for v in per_method.values()), default=0)):
        values = [v[p] for v in per_method.values() if p < len(v) and valid(v[p])]
        if len(values) >= 2:
            per_pass.append(max(values) / min(values))
    if not per_pass:
        return None
    medians = {m: float(np.median([x for x in v if valid(x)])) for m, v in per_method.items() if any(map(valid, v))}
    ratio = float(np.median(per_pass))
    return {"ms_per_mpix": medians, "per_pass_max_over_min": per_pass, "max_over_min": ratio,
            "tolerance": SCALE0_TOLERANCE, "flagged": bool(ratio > 1.0 + SCALE0_TOLERANCE)}


def run_warnings(num_images: int, scale0: Optional[Dict[str, Any]]) -> List[str]:
    """The report's warnings (each also logged): a split of fewer than MIN_IMAGES images, and
    scale-0 passes that disagree (:func:`scale0_agreement`)."""
    out = []
    if num_images < MIN_IMAGES:
        out.append(f"only {num_images} images: AP differences and their intervals say little below "
                   f"{MIN_IMAGES} images (intervals from so few images are themselves unreliable)")
    if scale0 and scale0["flagged"]:
        detail = ", ".join(f"{k} {v:.0f}" for k, v in scale0["ms_per_mpix"].items())
        out.append(f"identical scale-0 passes were timed {scale0['max_over_min']:.2f}x apart within a timed "
                   f"pass (median over passes; > {1 + scale0['tolerance']:.2f}x; median ms/Mpix: {detail}): "
                   "time ratios of this run are uncertain by about as much")
    for w in out:
        logger.warning("benchmark: %s", w)
    return out
