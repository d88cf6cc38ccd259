"""Oracle FocusChip analysis: what AutoFocus could recover with a perfect FocusPixel map.

No model is involved. The FocusPixel map of every view is built from the ground truth with the
training labels (:func:`focus_pixel_targets` ``== 1``) and turned into chips exactly as
:class:`CoarseToFinePipeline` does it with :class:`AutoFocusChipPolicy` (Algorithm 1 per parent
view, chips mapped to the original frame, snapped to pixels, merged across parents, capped at
``MAX_CHIPS_PER_IMAGE``; chips longer than ``MAX_CHIP_SIDE`` tiled). The share of objects that the
chips recover is the recall upper bound of AutoFocus for that chip setting.

Frames: boxes are XYXY in ORIGINAL image pixels unless a docstring says otherwise; a view's frame
is its ``out_hw`` image at its scale (see :class:`View`).
"""
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes
from tabulate import tabulate
from torch import Tensor
from tqdm import tqdm

from ..config import per_transition, validate_autofocus_config
from ..evaluation.efficiency import summarize_efficiency
# oracle_focus_map lives beside the oracle chip policy: one place turns ground truth into
# FocusPixels (re-exported here, its historical home).
from ..inference.chip_policies import AutoFocusChipPolicy, oracle_focus_map
from ..inference.focus_stacking import in_size_range
from ..inference.pipeline import CoarseToFinePipeline
from ..inference.views import View
from .ground_truth import SIZE_CLASSES, GroundTruthImage, load_coco_ground_truth

__all__ = [
    "RECOVERABLE_DEFINITION",
    "ChipSetting",
    "oracle_focus_map",
    "oracle_views",
    "detectable_at_scale",
    "inside_any_view",
    "recoverable_per_scale",
    "chip_settings",
    "analyze_oracle_chips",
    "run_oracle_analysis",
    "format_report_table",
]

# Tolerance, in original pixels, of "the box lies inside the view" (as focus stacking's test).
_INSIDE_TOL = 1e-3

RECOVERABLE_DEFINITION = (
    "An object (box size r = sqrt(w*h) in original pixels) is recoverable at scale k when (1) its "
    "box lies completely inside a view processed at scale k (scale 0: the whole image or its "
    "tiles; k >= 1: a chip or a tile of one), (2) its size at scale k, r * zoom_k, is one the "
    "pipeline means scale k to detect: above SMALL_RANGE max at every scale but the last (smaller "
    "objects are FocusPixels or too small: delegated to a finer scale), at least SMALL_RANGE min "
    "at the last scale, and (3) with more than one scale, r lies in VALID_RANGES[k] (focus "
    "stacking drops the other detections of scale k). It is recoverable when it is recoverable at "
    "some scale. zoom_k is the image's zoom at scale k of MODEL.AUTOFOCUS.SCALES (ScaleChain). Size classes use the "
    "COCO 'area' field: small < 32^2 <= medium < 96^2 <= large."
)


@dataclass(frozen=True)
class ChipSetting:
    """One chip setting: dilation (cells) and minimum chip size (pixels of the scale where the map
    is predicted), one value per scale transition."""

    dilation: Tuple[int, ...]
    min_chip_size: Tuple[float, ...]
    from_config: bool = False


def oracle_views(
    image: GroundTruthImage,
    pipeline: CoarseToFinePipeline,
    policy: AutoFocusChipPolicy,
    *,
    stride: int,
    small_range: Sequence[float],
    ignore_max: float,
    map_cache: Optional[Dict] = None,
) -> List[List[View]]:
    """
    The views the pipeline would process for ``image`` if every FocusPixel map were the oracle's:
    scale 0 as ``pipeline.first_views``, then for each finer scale ``policy.chips`` over the oracle
    maps of the previous scale's views and ``pipeline.views_for_chips``.

    ``map_cache`` (a dict kept per image) reuses oracle maps across calls with other policies.
    Returns one list of views per scale (``len(pipeline.scale_chain)``).
    """
    cache = {} if map_cache is None else map_cache
    views_per_scale = [pipeline.first_views(0, image.image_hw)]
    zooms = pipeline.scale_chain.zooms(image.image_hw)
    for k in range(1, len(zooms)):
        zoom = zooms[k]
        parents = views_per_scale[-1]
        maps = []
        for view in parents:
            key = (view.box, view.out_hw)
            if key not in cache:
                cache[key] = oracle_focus_map(
                    view, image.boxes, stride=stride, small_range=small_range, ignore_max=ignore_max
                )
            maps.append(cache[key])
        chips = policy.chips(next_scale=k, zoom=zoom, image_hw=image.image_hw, parents=parents,
                             focus_maps=maps, focus_stride=stride)
        views_per_scale.append(pipeline.views_for_chips(0, k, chips, zoom))
    return views_per_scale


def detectable_at_scale(
    boxes: Tensor, zooms: Sequence[float], *, small_range: Sequence[float],
    valid_ranges: Sequence[Sequence[float]],
) -> Tensor:
    """
    (S, N) bool: whether the size of each of the (N, 4) original-frame ``boxes`` at scale k (of
    ``S = len(zooms)``) is one the pipeline means scale k to detect, conditions (2) and (3) of
    :data:`RECOVERABLE_DEFINITION`. ``valid_ranges``: S [min, max] in original pixels (-1: none).
    """
    sizes = Boxes(boxes).area().clamp(min=0).sqrt()
    lo, hi = float(small_range[0]), float(small_range[1])
    rows = []
    for k, zoom in enumerate(zooms):
        at_scale = sizes * zoom
        ok = at_scale > hi if k + 1 < len(zooms) else at_scale >= lo
        if len(zooms) > 1:
            ok &= in_size_range(boxes, *valid_ranges[k])
        rows.append(ok)
    return torch.stack(rows) if rows else torch.zeros((0, len(boxes)), dtype=torch.bool)


def inside_any_view(boxes: Tensor, views: Sequence[View]) -> Tensor:
    """(N,) bool: whether each of the (N, 4) original-frame ``boxes`` lies completely inside the
    box of one of ``views`` (within 1e-3 pixel)."""
    if not views or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    regions = boxes.new_tensor([v.box for v in views])  # (V, 4)
    inside = (boxes[:, None, :2] >= regions[None, :, :2] - _INSIDE_TOL) & (
        boxes[:, None, 2:] <= regions[None, :, 2:] + _INSIDE_TOL
    )
    return inside.all(dim=2).any(dim=1)


def recoverable_per_scale(
    boxes: Tensor, views_per_scale: Sequence[Sequence[View]], detectable: Tensor
) -> Tensor:
    """(S, N) bool: object n is recoverable at scale k (:data:`RECOVERABLE_DEFINITION`), given the
    views processed per scale and :func:`detectable_at_scale`'s (S, N) mask."""
    return torch.stack(
        [detectable[k] & inside_any_view(boxes, views) for k, views in enumerate(views_per_scale)]
    )


def chip_settings(cfg, dilations: Sequence[int], min_chip_sizes: Sequence[float]) -> List[ChipSetting]:
    """The config's own setting (``MODEL.AUTOFOCUS.DILATION`` / ``MIN_CHIP_SIZE``, one value per
    transition) first, then the sweep: every (dilation, min chip size) pair, each value applied
    to every transition. A sweep pair equal to the config's setting is not repeated."""
    af = cfg.MODEL.AUTOFOCUS
    n = max(1, len(af.SCALES) - 1)
    for d in dilations:
        if int(d) != d or d < 1:
            raise ValueError(f"dilation {d} is not an integer >= 1")
    for m in min_chip_sizes:
        if not m >= 0 or math.isinf(m):
            raise ValueError(f"min chip size {m} is not finite and >= 0")
    config = ChipSetting(
        tuple(int(d) for d in per_transition(af.DILATION, n, "MODEL.AUTOFOCUS.DILATION")),
        tuple(float(m) for m in per_transition(af.MIN_CHIP_SIZE, n, "MODEL.AUTOFOCUS.MIN_CHIP_SIZE")),
        from_config=True,
    )
    settings = [config]
    for d in dilations:
        for m in min_chip_sizes:
            s = ChipSetting((int(d),) * n, (float(m),) * n)
            same_as_config = (s.dilation, s.min_chip_size) == (config.dilation, config.min_chip_size)
            if not same_as_config and s not in settings:
                settings.append(s)
    return settings


class _Tally:
    """Recoverable objects and per-image pipeline statistics of one setting (or the pyramid)."""

    def __init__(self, num_scales: int):
        self.at_scale = torch.zeros((num_scales, len(SIZE_CLASSES)), dtype=torch.long)
        self.total = torch.zeros(len(SIZE_CLASSES), dtype=torch.long)
        self.stats: List[Dict] = []

    def add(self, image: GroundTruthImage, views_per_scale, detectable, pipeline) -> None:
        rec = recoverable_per_scale(image.boxes, views_per_scale, detectable)  # (S, N)
        onehot = torch.nn.functional.one_hot(image.size_class, len(SIZE_CLASSES))  # (N, C)
        self.at_scale += rec.long() @ onehot
        self.total += (rec.any(dim=0).long()[:, None] * onehot).sum(dim=0)
        stats = pipeline.image_stats(0, image.image_hw, views_per_scale)
        stats.pop("chip_boxes_per_scale")
        self.stats.append(stats)

    def summary(self, counts: Tensor, scales: Sequence[Sequence[float]]) -> Dict:
        eff = summarize_efficiency(self.stats)

        def by_class(row: Tensor) -> Dict[str, int]:
            out = {c: int(row[i]) for i, c in enumerate(SIZE_CLASSES)}
            out["all"] = int(row.sum())
            return out

        recoverable, num = by_class(self.total), by_class(counts)
        return {
            "recall": {c: (recoverable[c] / num[c] if num[c] else None) for c in num},
            "recoverable": recoverable,
            "pixel_ratio": eff["pixel_ratio"],
            "pixels_per_image": eff["pixels_per_image"],
            "pyramid_pixels_per_image": eff["pyramid_pixels_per_image"],
            "chips_per_image": eff["chips_per_image"],
            "per_scale": [
                {
                    "scale": k,
                    "resolution": list(scales[k]),
                    "chips_per_image": eff[f"chips_scale{k}"],
                    "pixels_per_image": eff[f"pixels_scale{k}"],
                    "pyramid_pixels_per_image": eff[f"pyramid_pixels_scale{k}"],
                    "pixel_ratio": eff[f"pixel_ratio_scale{k}"],
                    "recoverable": by_class(self.at_scale[k]),
                }
                for k in range(self.at_scale.shape[0])
            ],
        }


def analyze_oracle_chips(
    images: Sequence[GroundTruthImage],
    cfg,
    settings: Sequence[ChipSetting],
    *,
    threshold: float = 0.5,
    stride: int = 16,
    progress: bool = True,
) -> Dict:
    """
    Run the oracle for every setting on ``images`` with the scale chain, focus label ranges and
    tiling of ``cfg`` (the chip policy's threshold is ``threshold`` on the binary oracle map at
    every transition: 0.5 selects the FocusPixels, 0 every valid cell). A setting's single value
    applies to every transition.

    Returns ``{"objects": {...}, "settings": [...], "pyramid": {...}}``: the object counts per
    size class ("all" included); per setting its dilation, min chip size and
    the figures of ``_Tally.summary`` (recall per size class, pixel ratio to the full pyramid,
    chips per image, per-scale breakdown); "pyramid" the same figures for the full pyramid.
    """
    validate_autofocus_config(cfg)
    if int(stride) != stride or stride <= 0:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    if not images:
        raise ValueError("no images to analyse")
    head = cfg.MODEL.FOCUS_HEAD
    small_range, ignore_max = tuple(head.SMALL_RANGE), float(head.IGNORE_MAX)
    pipeline = CoarseToFinePipeline(cfg)
    num_scales = len(pipeline.scale_chain)
    n = max(1, num_scales - 1)
    settings = [  # a single value applies to every transition, as in the config
        ChipSetting(
            tuple(per_transition(s.dilation, n, "ChipSetting.dilation")),
            tuple(per_transition(s.min_chip_size, n, "ChipSetting.min_chip_size")),
            s.from_config,
        )
        for s in settings
    ]
    policies = [
        AutoFocusChipPolicy(
            thresholds=[float(threshold)] * n,
            dilations=list(s.dilation),
            min_sizes=list(s.min_chip_size),
            max_chips=cfg.MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE,
        )
        for s in settings
    ]
    tallies = [_Tally(num_scales) for _ in settings]
    pyramid = _Tally(num_scales)
    counts = torch.zeros(len(SIZE_CLASSES), dtype=torch.long)
    for image in tqdm(images, desc="oracle chips", unit="image", disable=not progress):
        counts += torch.bincount(image.size_class, minlength=len(SIZE_CLASSES))
        detectable = detectable_at_scale(image.boxes, pipeline.scale_chain.zooms(image.image_hw),
                                         small_range=small_range, valid_ranges=pipeline.valid_ranges)
        pyramid.add(image, pipeline.pyramid_views(image.image_hw), detectable, pipeline)
        cache: Dict = {}
        for policy, tally in zip(policies, tallies):
            views = oracle_views(image, pipeline, policy, stride=stride, small_range=small_range,
                                 ignore_max=ignore_max, map_cache=cache)
            tally.add(image, views, detectable, pipeline)
    objects = {c: int(counts[i]) for i, c in enumerate(SIZE_CLASSES)}
    objects["all"] = int(counts.sum())
    results = []
    for s, tally in zip(settings, tallies):
        entry = {"dilation": list(s.dilation), "min_chip_size": list(s.min_chip_size),
                 "from_config": s.from_config}
        entry.update(tally.summary(counts, pipeline.scale_chain.scales))
        results.append(entry)
    pyramid_figures = pyramid.summary(counts, pipeline.scale_chain.scales)
    return {"objects": objects, "settings": results, "pyramid": pyramid_figures}


def run_oracle_analysis(
    json_path: str,
    cfg,
    *,
    dilations: Sequence[int] = (1, 3, 5),
    min_chip_sizes: Sequence[float] = (64, 128, 256),
    threshold: float = 0.5,
    stride: int = 16,
    max_images: Optional[int] = None,
    progress: bool = True,
) -> Dict:
    """Load ``json_path``, run :func:`analyze_oracle_chips` over :func:`chip_settings` and return
    the full report (inputs, object counts, the definition of 'recoverable', the figures)."""
    images, skipped = load_coco_ground_truth(json_path, max_images)
    settings = chip_settings(cfg, dilations, min_chip_sizes)
    figures = analyze_oracle_chips(
        images, cfg, settings, threshold=threshold, stride=stride, progress=progress
    )
    af, head = cfg.MODEL.AUTOFOCUS, cfg.MODEL.FOCUS_HEAD
    return {
        "annotations": os.path.abspath(json_path),
        "images": len(images),
        "skipped_annotations": skipped,
        "recoverable_definition": RECOVERABLE_DEFINITION,
        "scale_chain": {
            "scales": [list(sc) for sc in af.SCALES],
            "max_chip_side": af.MAX_CHIP_SIDE,
            "tile_overlap": af.TILE_OVERLAP,
            "max_chips_per_image": af.MAX_CHIPS_PER_IMAGE,
            "valid_ranges": [list(r) for r in af.VALID_RANGES],
        },
        "focus_labels": {"stride": int(stride), "threshold": float(threshold),
                         "small_range": list(head.SMALL_RANGE), "ignore_max": float(head.IGNORE_MAX)},
        "sweep": {
            "dilations": [int(d) for d in dilations],
            "min_chip_sizes": [float(m) for m in min_chip_sizes],
        },
        **figures,
    }


def format_report_table(report: Dict) -> str:
    """The report as a text table: one row per setting (``*``: the config's), then the pyramid."""
    num_scales = len(report["pyramid"]["per_scale"])

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def values(v):  # one value per transition; a single one when they are all equal
        return f"{v[0]:g}" if len(set(v)) == 1 else "/".join(f"{x:g}" for x in v)

    def row(name_d, name_m, entry):
        return [name_d, name_m, pct(entry["recall"]["small"]), pct(entry["recall"]["medium"]),
                pct(entry["recall"]["large"]), f"{entry['pixel_ratio']:.3f}"] + [
            f"{entry['per_scale'][k]['chips_per_image']:.2f}" for k in range(1, num_scales)
        ]

    rows = [
        row(values(s["dilation"]) + ("*" if s["from_config"] else ""), values(s["min_chip_size"]), s)
        for s in report["settings"]
    ]
    rows.append(row("pyramid", "", report["pyramid"]))
    headers = ["dilation", "min chip", "small %", "medium %", "large %", "pixel ratio"] + [
        f"chips/img s{k}" for k in range(1, num_scales)
    ]
    return tabulate(rows, headers=headers, tablefmt="github")
