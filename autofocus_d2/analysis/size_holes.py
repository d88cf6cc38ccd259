"""Size holes of a scale chain: object sizes that no scale's focus stacking keeps.

Focus stacking keeps a detection of scale k only when its size ``r = sqrt(area)`` (original
pixels) lies in ``MODEL.AUTOFOCUS.VALID_RANGES[k]`` (when more than one scale runs), and, at every
scale but the last, drops it when it is small at that scale (``r * zoom_k < SMALL_DROP_SIZE``) and
lies inside a finer chip (:func:`~autofocus_d2.inference.focus_stacking.stacking_keep_mask`). An
object whose size no scale keeps is lost however good the detector and the chips are.

The valid ranges are in original pixels, so on their own they leave the same holes at every image
size; the small-and-covered limit is in pixels of each scale, so with it the holes depend on the
image's zooms (:class:`ScaleChain`).
"""
import math
from typing import List, Sequence, Tuple, Union

import torch
from detectron2.structures import Boxes
from torch import Tensor

from ..structures.scale_chain import ScaleChain

__all__ = ["kept_size_intervals", "size_holes", "in_size_holes", "objects_in_holes"]

Interval = Tuple[float, float]


def kept_size_intervals(
    zooms: Sequence[float], valid_ranges: Sequence[Sequence[float]], *, small_drop_size: float = 0.0
) -> List[Interval]:
    """
    Per scale, the closed interval ``[lo, hi]`` of sizes ``r = sqrt(area)`` (original pixels) whose
    detections focus stacking keeps at that scale when the object lies inside a finer chip (as in
    the full pyramid, where the finer views are the whole image).

    Args:
        zooms: zoom of each scale for one image (pixels of the scale per original pixel).
        valid_ranges: one [min, max] per scale, original pixels, -1 = no limit
            (MODEL.AUTOFOCUS.VALID_RANGES); not applied with a single scale, as in stacking.
        small_drop_size: MODEL.AUTOFOCUS.SMALL_DROP_SIZE, pixels of the scale (0 = off); at every
            scale but the last, sizes below ``small_drop_size / zoom`` are dropped.

    Returns:
        One ``(lo, hi)`` per scale (``hi`` may be ``math.inf``; ``lo > hi`` when the scale keeps
        nothing).
    """
    if len(valid_ranges) != len(zooms):
        raise ValueError(
            f"{len(valid_ranges)} valid ranges for {len(zooms)} scales (MODEL.AUTOFOCUS.VALID_RANGES "
            "needs one [min, max] per scale of MODEL.AUTOFOCUS.SCALES)"
        )
    if not small_drop_size >= 0 or math.isinf(small_drop_size):
        raise ValueError(f"small_drop_size must be finite and >= 0, got {small_drop_size}")
    kept = []
    for k, zoom in enumerate(zooms):
        lo, hi = 0.0, math.inf
        if len(zooms) > 1:
            lo = max(0.0, float(valid_ranges[k][0]))
            hi = math.inf if valid_ranges[k][1] < 0 else float(valid_ranges[k][1])
        if k + 1 < len(zooms) and small_drop_size > 0:
            lo = max(lo, small_drop_size / zoom)
        kept.append((lo, hi))
    return kept


def _complement(kept: Sequence[Interval]) -> List[Interval]:
    """The open intervals of (0, inf) outside every closed interval of ``kept``."""
    holes, cursor = [], 0.0
    for lo, hi in sorted(i for i in kept if i[0] <= i[1]):
        if lo > cursor:
            holes.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < math.inf:
        holes.append((cursor, math.inf))
    return holes


def size_holes(
    scale_chain: Union[ScaleChain, Sequence[Sequence[float]]],
    valid_ranges: Sequence[Sequence[float]],
    image_sizes: Sequence[Tuple[int, int]],
    *,
    small_drop_size: float = 0.0,
) -> List[Tuple[Tuple[int, int], List[Interval]]]:
    """
    The object sizes that no scale of the chain keeps, per distinct image size.

    Args:
        scale_chain: a :class:`ScaleChain`, or its scales (MODEL.AUTOFOCUS.SCALES: one
            ``(short, cap)`` per scale, -1 = no constraint).
        valid_ranges: MODEL.AUTOFOCUS.VALID_RANGES, one [min, max] per scale, sqrt(area) in
            original pixels, -1 = no limit.
        image_sizes: (H, W) of the images, original pixels; repeats are reported once.
        small_drop_size: MODEL.AUTOFOCUS.SMALL_DROP_SIZE (pixels of the scale). 0 (the default):
            the holes of the valid ranges alone, which lose an object wherever it lies. Otherwise
            also the sizes lost when the object lies inside a finer chip's trusted area (always so
            in the full pyramid): see :func:`kept_size_intervals`.

    Returns:
        ``[(image_hw, [(lo, hi), ...]), ...]``: one entry per distinct ``(H, W)`` of
        ``image_sizes`` in order of first appearance, each with its holes, sorted: open intervals
        ``lo < r < hi`` of ``r = sqrt(area)`` in original pixels that no scale keeps (``hi`` may be
        ``math.inf``; a hole from 0 also holds ``r = 0``). An empty list: no hole. For example the
        chain ``[[480, 512], [800, 1280]]`` with valid ranges ``[[281, -1], [-1, 270]]`` leaves
        ``(270, 281)`` on every image size.
    """
    chain = scale_chain if isinstance(scale_chain, ScaleChain) else ScaleChain(scales=scale_chain)
    out, seen = [], set()
    for hw in image_sizes:
        hw = (int(hw[0]), int(hw[1]))
        if hw in seen:
            continue
        seen.add(hw)
        kept = kept_size_intervals(chain.zooms(hw), valid_ranges, small_drop_size=small_drop_size)
        out.append((hw, _complement(kept)))
    return out


def in_size_holes(boxes: Tensor, holes: Sequence[Interval]) -> Tensor:
    """(N,) bool: whether ``sqrt(area)`` of each of the (N, 4) XYXY original-frame ``boxes`` lies in
    one of the open intervals ``holes`` (one image's list from :func:`size_holes`)."""
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    sizes = Boxes(boxes).area().clamp(min=0).sqrt()
    inside = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for lo, hi in holes:
        inside |= (sizes > lo) & (sizes < hi)
    return inside


def objects_in_holes(
    boxes_per_image: Sequence[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    holes: Sequence[Tuple[Tuple[int, int], Sequence[Interval]]],
) -> int:
    """
    How many ground-truth boxes fall in a size hole of their image's size.

    Args:
        boxes_per_image: per image, (N_i, 4) XYXY boxes in original pixels.
        image_sizes: per image, its (H, W).
        holes: :func:`size_holes` of (at least) these image sizes.

    Returns:
        The number of boxes whose ``sqrt(area)`` lies in a hole (:func:`in_size_holes` per image).
    """
    if len(boxes_per_image) != len(image_sizes):
        raise ValueError(f"{len(boxes_per_image)} box lists for {len(image_sizes)} image sizes")
    by_size = {tuple(hw): list(intervals) for hw, intervals in holes}
    total = 0
    for i, (boxes, hw) in enumerate(zip(boxes_per_image, image_sizes)):
        hw = (int(hw[0]), int(hw[1]))
        if hw not in by_size:
            raise ValueError(f"no holes computed for image size {hw} (image {i}): pass it to size_holes")
        total += int(in_size_holes(boxes, by_size[hw]).sum())
    return total
