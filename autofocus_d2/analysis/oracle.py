"""Oracle FocusChip analysis: what AutoFocus could recover with a perfect FocusPixel map and a
perfect detector.

No model is involved. The chips of every image come from the pipeline's own
:class:`OracleChipPolicy` (FocusPixels from the ground truth with the training label rule,
``MODEL.FOCUS_HEAD.SMALL_RANGE`` / ``IGNORE_MAX`` / ``SMALL_MIN_FRAME``, then FocusChips as
:class:`AutoFocusChipPolicy` makes them) and the pipeline's own view building
(:meth:`CoarseToFinePipeline.first_views` / ``views_for_chips``: tiles included). Each
ground-truth box is then a perfect detection in every view that contains it, and focus stacking's
own per-view rule (:func:`stacking_keep_mask`: border, valid ranges, small and covered) decides
which copies survive; see :data:`RECOVERABLE_DEFINITION`. The share of objects recovered is the
recall upper bound of AutoFocus for that chip setting.

Frames: boxes are XYXY in ORIGINAL image pixels unless a docstring says otherwise; a view's frame
is its ``out_hw`` image at its scale (see :class:`View`).
"""
import math
import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..config import per_transition, validate_autofocus_config
from ..evaluation.efficiency import summarize_efficiency
# oracle_focus_map lives beside the oracle chip policy: one place turns ground truth into
# FocusPixels (re-exported here, its historical home).
from ..inference.chip_policies import ChipPolicy, OracleChipPolicy, oracle_focus_map
from ..inference.focus_stacking import stacking_keep_mask
from ..inference.pipeline import CoarseToFinePipeline
from ..structures.views import View
from ..utils.quiet_logs import progress as show_progress
from .ground_truth import SIZE_CLASSES, GroundTruthImage, load_coco_ground_truth
from .size_holes import in_size_holes, size_holes

__all__ = [
    "RECOVERABLE_DEFINITION",
    "ChipSetting",
    "oracle_focus_map",
    "oracle_chip_policy",
    "oracle_views",
    "perfect_detections",
    "recoverable_per_scale",
    "chip_settings",
    "analyze_oracle_chips",
    "run_oracle_analysis",
]

# Tolerance, in original pixels, of "the box lies inside the view" (as focus stacking's test).
_INSIDE_TOL = 1e-3

RECOVERABLE_DEFINITION = (
    "An object is recoverable when focus stacking keeps it given perfect detections: its ground-"
    "truth box (clipped to the image) is detected in every view that fully contains it (scale 0: "
    "the whole image or its tiles; scale k >= 1: the chips of the oracle chip policy, or their "
    "tiles), and at least one of these copies survives the pipeline's per-view stacking rules "
    "(stacking_keep_mask): not within BORDER_MARGIN of a chip border that is not an image border; "
    "sqrt(area) within VALID_RANGES[k] (original pixels, with more than one scale); not both "
    "smaller than SMALL_DROP_SIZE pixels at scale k and inside the trusted area of a scale k+1 "
    "chip. Recoverable at scale k: a copy of scale k survives. Size classes use the COCO 'area' "
    "field: small < 32^2 <= medium < 96^2 <= large."
)


@dataclass(frozen=True)
class ChipSetting:
    """One chip setting: dilation (cells) and minimum chip size (pixels of the scale where the map
    is predicted), one value per scale transition."""

    dilation: Tuple[int, ...]
    min_chip_size: Tuple[float, ...]
    from_config: bool = False


def oracle_chip_policy(cfg, setting: Optional[ChipSetting] = None) -> OracleChipPolicy:
    """The pipeline's :class:`OracleChipPolicy` of ``cfg`` (focus label rule, chip cap), with the
    dilation and minimum chip size of ``setting`` when given (one value per transition)."""
    kwargs = OracleChipPolicy.from_config(cfg)
    if setting is not None:
        kwargs.update(dilations=list(setting.dilation), min_sizes=list(setting.min_chip_size))
    return OracleChipPolicy(**kwargs)


def perfect_detections(image: GroundTruthImage) -> Tensor:
    """(N, 4) float32: the image's ground-truth boxes as a perfect detector outputs them, clipped to
    the image (a detector's boxes never leave it) in the float32 of detections."""
    h, w = image.image_hw
    boxes = image.boxes.float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def oracle_views(
    image: GroundTruthImage, pipeline: CoarseToFinePipeline, policy: ChipPolicy, *, stride: int
) -> List[List[View]]:
    """
    The views the pipeline processes for ``image`` with chip policy ``policy`` (an
    :class:`OracleChipPolicy`, or any policy that needs no FocusPixel map): scale 0 as
    ``pipeline.first_views``, then for each finer scale ``policy.chips`` over the previous scale's
    views (given the image's ground truth, float32 as the pipeline passes it) and
    ``pipeline.views_for_chips``; ``stride`` is the focus map stride in pixels of the view.

    Returns one list of views per scale the policy processes.
    """
    if policy.needs_focus:
        raise ValueError(f"{type(policy).__name__} needs FocusPixel maps from a model; the oracle "
                         "analysis runs without one")
    gt = image.boxes.float()
    num_scales = policy.num_scales(len(pipeline.scale_chain))
    zooms = pipeline.scale_chain.zooms(image.image_hw)
    views_per_scale = [pipeline.first_views(0, image.image_hw, zooms[0])]
    for k in range(1, num_scales):
        parents = views_per_scale[-1]
        chips = policy.chips(next_scale=k, zoom=zooms[k], image_hw=image.image_hw, parents=parents,
                             focus_maps=[None] * len(parents), focus_stride=stride, gt_boxes=gt)
        views_per_scale.append(pipeline.views_for_chips(0, k, chips, zooms[k]))
    return views_per_scale


def _inside(boxes: Tensor, view: View) -> Tensor:
    """(N,) bool: the (N, 4) original-frame boxes lying inside ``view.box`` (within 1e-3 pixel)."""
    region = boxes.new_tensor(view.box)
    return ((boxes[:, :2] >= region[:2] - _INSIDE_TOL) & (boxes[:, 2:] <= region[2:] + _INSIDE_TOL)).all(dim=1)


def recoverable_per_scale(
    boxes: Tensor,
    image_hw: Tuple[int, int],
    views_per_scale: Sequence[Sequence[View]],
    pipeline: CoarseToFinePipeline,
) -> Tensor:
    """
    (S, N) bool, ``S = len(views_per_scale)``: whether a copy of each of the (N, 4) original-frame
    ``boxes`` (perfect detections, :func:`perfect_detections`) in a scale-k view that contains it
    survives :func:`stacking_keep_mask` with the pipeline's stacking settings (border margin,
    valid ranges, small-drop size). An object is recoverable when its column has a True.
    """
    num_scales = len(views_per_scale)
    out = torch.zeros((num_scales, len(boxes)), dtype=torch.bool)
    for k, views in enumerate(views_per_scale):
        finer = list(views_per_scale[k + 1]) if k + 1 < num_scales else []
        for view in views:
            idx = _inside(boxes, view).nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            keep = stacking_keep_mask(
                boxes[idx], view, finer, image_hw, border_margin=pipeline.border_margin,
                valid_range=pipeline.valid_ranges[k], small_drop_size=pipeline.small_drop_size,
                num_scales=num_scales,
            )
            out[k, idx[keep]] = True
    return out


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
        # at_scale[k]: recoverable at scale k; finest[k]: scale k is the finest scale keeping it.
        self.at_scale = torch.zeros((num_scales, len(SIZE_CLASSES)), dtype=torch.long)
        self.finest = torch.zeros((num_scales, len(SIZE_CLASSES)), dtype=torch.long)
        self.total = torch.zeros(len(SIZE_CLASSES), dtype=torch.long)
        self.stats: List[Dict] = []

    def add(self, image: GroundTruthImage, boxes: Tensor, views_per_scale, pipeline) -> None:
        rec = recoverable_per_scale(boxes, image.image_hw, views_per_scale, pipeline)  # (S', N)
        onehot = torch.nn.functional.one_hot(image.size_class, len(SIZE_CLASSES))  # (N, C)
        s = rec.shape[0]
        self.at_scale[:s] += rec.long() @ onehot
        found = rec.any(dim=0)
        finest = s - 1 - rec.flip(0).long().argmax(dim=0)  # (N,) finest scale with a True
        self.finest[:s] += torch.nn.functional.one_hot(finest[found], s).t().long() @ onehot[found]
        self.total += (found.long()[:, None] * onehot).sum(dim=0)
        stats = pipeline.image_stats(0, image.image_hw, views_per_scale)
        self.stats.append(replace(stats, chip_boxes_per_scale=None).to_dict())

    def summary(self, counts: Tensor, scales: Sequence[Sequence[float]]) -> Dict:
        eff = summarize_efficiency(self.stats)
        recoverable, num = _by_class(self.total), _by_class(counts)
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
                    "chips_per_image": eff.get(f"chips_scale{k}", 0.0),
                    "pixels_per_image": eff.get(f"pixels_scale{k}", 0.0),
                    "pyramid_pixels_per_image": eff[f"pyramid_pixels_scale{k}"],
                    "pixel_ratio": eff.get(f"pixel_ratio_scale{k}", 0.0),
                    "recoverable": _by_class(self.at_scale[k]),
                    "finest": _by_class(self.finest[k]),
                }
                for k in range(self.at_scale.shape[0])
            ],
        }


def _by_class(row: Tensor) -> Dict[str, int]:
    """{size class: count, "all": total} of a (C,) count row."""
    out = {c: int(row[i]) for i, c in enumerate(SIZE_CLASSES)}
    out["all"] = int(row.sum())
    return out


def _holes_report(images: Sequence[GroundTruthImage], pipeline: CoarseToFinePipeline) -> Dict:
    """Size holes of the chain (:func:`size_holes`) on the images' sizes, by the valid ranges alone
    ("anywhere") and with the small-and-covered rule for objects inside a finer chip ("covered"),
    and how many objects of the images fall in one, per size class."""
    sizes = [im.image_hw for im in images]
    out = {}
    for key, drop in (("anywhere", 0.0), ("covered", pipeline.small_drop_size)):
        holes = size_holes(pipeline.scale_chain, pipeline.valid_ranges, sizes, small_drop_size=drop)
        by_size = dict(holes)
        counts = torch.zeros(len(SIZE_CLASSES), dtype=torch.long)
        for im in images:
            mask = in_size_holes(perfect_detections(im), by_size[im.image_hw])
            counts += torch.bincount(im.size_class[mask], minlength=len(SIZE_CLASSES))
        out[key] = {
            "small_drop_size": drop,
            "holes": [{"image_hw": list(hw), "holes": [[lo, hi if hi < math.inf else None] for lo, hi in iv]}
                      for hw, iv in holes],
            "objects_in_holes": _by_class(counts),
        }
    return out


def analyze_oracle_chips(
    images: Sequence[GroundTruthImage],
    cfg,
    settings: Sequence[ChipSetting],
    *,
    stride: int = 16,
    progress: bool = True,
) -> Dict:
    """
    Run the oracle for every setting on ``images`` with the scale chain, tiling, focus label rule
    and focus stacking settings of ``cfg`` (:func:`oracle_chip_policy`, :func:`oracle_views`,
    :func:`recoverable_per_scale`). A setting's single value applies to every transition.
    ``stride``: the focus map stride of the model, pixels of the view.

    Returns ``{"objects": {...}, "settings": [...], "pyramid": {...}, "holes": {...}}``: the object
    counts per size class ("all" included); per setting its dilation, min chip size and the
    figures of ``_Tally.summary`` (recall per size class, pixel ratio to the full pyramid, chips
    per image, per scale: objects recoverable there and objects whose finest surviving copy is
    there); "pyramid" the same figures for the full pyramid; "holes" :func:`_holes_report`.
    """
    validate_autofocus_config(cfg)
    if int(stride) != stride or stride <= 0:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    if not images:
        raise ValueError("no images to analyse")
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
    policies = [oracle_chip_policy(cfg, s) for s in settings]
    tallies = [_Tally(num_scales) for _ in settings]
    pyramid = _Tally(num_scales)
    counts = torch.zeros(len(SIZE_CLASSES), dtype=torch.long)
    for image in show_progress(images, "oracle chips", enabled=progress):
        counts += torch.bincount(image.size_class, minlength=len(SIZE_CLASSES))
        boxes = perfect_detections(image)
        pyramid.add(image, boxes, pipeline.pyramid_views(image.image_hw), pipeline)
        for policy, tally in zip(policies, tallies):
            tally.add(image, boxes, oracle_views(image, pipeline, policy, stride=stride), pipeline)
    results = []
    for s, tally in zip(settings, tallies):
        entry = {"dilation": list(s.dilation), "min_chip_size": list(s.min_chip_size),
                 "from_config": s.from_config}
        entry.update(tally.summary(counts, pipeline.scale_chain.scales))
        results.append(entry)
    return {
        "objects": _by_class(counts),
        "settings": results,
        "pyramid": pyramid.summary(counts, pipeline.scale_chain.scales),
        "holes": _holes_report(images, pipeline),
    }


def run_oracle_analysis(
    json_path: str,
    cfg,
    *,
    dilations: Sequence[int] = (1, 3, 5),
    min_chip_sizes: Sequence[float] = (64, 128, 256),
    stride: int = 16,
    max_images: Optional[int] = None,
    progress: bool = True,
) -> Dict:
    """Load ``json_path``, run :func:`analyze_oracle_chips` over :func:`chip_settings` and return
    the full report (inputs, object counts, the definition of 'recoverable', the figures)."""
    images, skipped = load_coco_ground_truth(json_path, max_images)
    settings = chip_settings(cfg, dilations, min_chip_sizes)
    figures = analyze_oracle_chips(images, cfg, settings, stride=stride, progress=progress)
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
        },
        "stacking": {
            "valid_ranges": [list(r) for r in af.VALID_RANGES],
            "border_margin": float(af.BORDER_MARGIN),
            "small_drop_size": float(af.SMALL_DROP_SIZE),
        },
        "focus_labels": {"stride": int(stride), "small_range": list(head.SMALL_RANGE),
                         "ignore_max": float(head.IGNORE_MAX), "small_min_frame": head.SMALL_MIN_FRAME},
        "sweep": {
            "dilations": [int(d) for d in dilations],
            "min_chip_sizes": [float(m) for m in min_chip_sizes],
        },
        **figures,
    }
