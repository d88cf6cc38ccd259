"""Focus stacking: the rules that decide which detections of which scale and chip survive.

Every rule is a small pure function returning an (R,) bool keep-mask over (R, 4) XYXY float boxes;
:func:`merge_indices` then merges the survivors of all scales and chips. Unless said otherwise,
boxes, chips and sizes are in the **original image frame** (pixels of the input image before any
test-time resizing).
"""
import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

from detectron2.layers import batched_nms
from detectron2.structures import Boxes, pairwise_iou

from ..structures import View, box_sizes, in_size_range

__all__ = [
    "drop_border_cut",
    "drop_small_covered",
    "merge_detections",
    "merge_indices",
    "stacking_keep_mask",
    "trusted_chip_area",
]

# A chip edge this close to the image border (in original-frame pixels) is an image border.
_IMAGE_BORDER_TOL = 0.5
# Tolerance (original-frame pixels) of the "box lies inside a finer chip" test.
_INSIDE_TOL = 1e-3
# trusted_chip_area moves inner edges by the margin plus this (original-frame pixels), so that a
# box that drop_border_cut drops (inward distance <= margin) is never "covered" despite _INSIDE_TOL.
_TRUSTED_SLACK = 2 * _INSIDE_TOL


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (R, 4), got {tuple(boxes.shape)}")


def drop_border_cut(
    boxes: Tensor, chip: Tensor, image_hw: Tuple[int, int], margin: float
) -> Tensor:
    """
    Drop detections that a chip border may have cut: a box is dropped when, on any side, its
    edge is within ``margin`` pixels of (or beyond) the chip edge of that side, unless that chip
    edge is also an image border. A chip edge is an image border when it lies within 0.5 pixel
    of it: ``x0 <= 0.5``, ``y0 <= 0.5``, ``x1 >= W - 0.5`` or ``y1 >= H - 0.5``.

    The distance of a side is signed and inward (e.g. ``box.x0 - chip.x0`` on the left); the box
    is dropped when it is ``<= margin``, so a distance of exactly ``margin`` drops it, and with
    ``margin = 0`` only boxes touching or crossing an inner chip edge are dropped.

    Args:
        boxes (Tensor): (R, 4) XYXY detections of the chip, in the original image frame.
        chip (Tensor): (4,) XYXY chip, in the original image frame.
        image_hw: (H, W) of the original image, in pixels.
        margin (float): >= 0, in original-frame pixels.

    Returns:
        Tensor: (R,) bool, True for the boxes to keep.
    """
    _check_boxes(boxes)
    if chip.shape != (4,):
        raise ValueError(f"chip must have shape (4,), got {tuple(chip.shape)}")
    if not margin >= 0 or math.isinf(margin):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    height, width = image_hw
    chip = chip.to(device=boxes.device, dtype=boxes.dtype)
    inner_edge = torch.stack(
        [
            chip[0] > _IMAGE_BORDER_TOL,
            chip[1] > _IMAGE_BORDER_TOL,
            chip[2] < width - _IMAGE_BORDER_TOL,
            chip[3] < height - _IMAGE_BORDER_TOL,
        ]
    )
    inward = torch.cat([boxes[:, :2] - chip[:2], chip[2:] - boxes[:, 2:]], dim=1)  # (R, 4)
    return ~((inward <= margin) & inner_edge).any(dim=1)


def trusted_chip_area(chips: Tensor, image_hw: Tuple[int, int], margin: float) -> Tensor:
    """
    The part of each chip whose detections survive :func:`drop_border_cut`: every chip edge that
    is not an image border moved inward by ``margin`` (plus 0.002 pixel, so that a box exactly
    ``margin`` from an inner edge, which :func:`drop_border_cut` drops, does not count as inside
    even with :func:`drop_small_covered`'s 0.001 pixel tolerance). A coarser detection is only
    "covered" by a finer chip (:func:`drop_small_covered`) when it lies in this area; otherwise the
    finer scale would drop its copy at the chip border and the object would be lost at both scales.

    Args:
        chips (Tensor): (C, 4) XYXY chips in the original image frame.
        image_hw: (H, W) of the original image.
        margin (float): the border margin of :func:`drop_border_cut`, original-frame pixels.

    Returns:
        Tensor: (C, 4) XYXY, same frame (a chip thinner than twice the margin may come out empty,
        x0 >= x1, which then covers nothing).
    """
    _check_boxes(chips, "chips")
    height, width = image_hw
    inner = torch.stack(
        [
            chips[:, 0] > _IMAGE_BORDER_TOL,
            chips[:, 1] > _IMAGE_BORDER_TOL,
            chips[:, 2] < width - _IMAGE_BORDER_TOL,
            chips[:, 3] < height - _IMAGE_BORDER_TOL,
        ],
        dim=1,
    ).to(chips.dtype)
    return chips + (margin + _TRUSTED_SLACK) * inner * chips.new_tensor([1.0, 1.0, -1.0, -1.0])


def drop_small_covered(boxes: Tensor, finer_chips: Tensor, max_size: float) -> Tensor:
    """
    Drop small detections that the next finer scale will find: a box is dropped when it lies
    completely inside one of ``finer_chips`` (with a 1e-3 pixel tolerance) and
    ``sqrt(area) < max_size``.

    Args:
        boxes (Tensor): (R, 4) XYXY detections, in the original image frame.
        finer_chips (Tensor): (C, 4) XYXY chips processed at the next finer scale, in the
            original image frame; C may be 0 (then every box is kept).
        max_size (float): size limit in original-frame pixels (strict: ``sqrt(area) == max_size``
            is kept).

    Returns:
        Tensor: (R,) bool, True for the boxes to keep.
    """
    _check_boxes(boxes)
    _check_boxes(finer_chips, "finer_chips")
    if math.isnan(max_size):
        raise ValueError(f"max_size must not be NaN, got {max_size}")
    finer_chips = finer_chips.to(device=boxes.device, dtype=boxes.dtype)
    inside = (
        (boxes[:, None, :2] >= finer_chips[None, :, :2] - _INSIDE_TOL)
        & (boxes[:, None, 2:] <= finer_chips[None, :, 2:] + _INSIDE_TOL)
    ).all(dim=2)  # (R, C)
    return ~(inside.any(dim=1) & (box_sizes(boxes) < max_size))


def stacking_keep_mask(
    boxes: Tensor,
    view: View,
    finer_views: Sequence[View],
    image_hw: Tuple[int, int],
    *,
    border_margin: float,
    valid_range: Sequence[float],
    small_drop_size: float,
    num_scales: int,
) -> Tensor:
    """
    Which detections of one view focus stacking keeps: the one place that applies its rules to a
    view, used by :meth:`CoarseToFinePipeline.stack` and by the oracle analysis
    (``autofocus_d2.analysis``), so what the analysis calls recoverable is what the pipeline keeps.

    1. Border: unless ``view`` is the whole image, :func:`drop_border_cut` with ``border_margin``.
    2. Valid range: with more than one scale processed, :func:`in_size_range` with
       ``valid_range`` (the view's scale's [min, max], -1 = no limit).
    3. Small and covered: with views at the next finer scale, :func:`drop_small_covered` over
       their :func:`trusted_chip_area`, size limit ``small_drop_size / view.zoom`` (0 = off).

    Args:
        boxes (Tensor): (R, 4) XYXY detections of ``view``, in the original image frame.
        view: the view they come from (scale k).
        finer_views: the views of the same image at scale k + 1 (empty at the last scale).
        image_hw: (H, W) of the original image, pixels.
        border_margin: MODEL.AUTOFOCUS.BORDER_MARGIN, original pixels.
        valid_range: MODEL.AUTOFOCUS.VALID_RANGES[k], sqrt(area) in original pixels.
        small_drop_size: MODEL.AUTOFOCUS.SMALL_DROP_SIZE, sqrt(area) in pixels of scale k.
        num_scales: how many scales the policy processes for the image.

    Returns:
        Tensor: (R,) bool, True for the boxes to keep.
    """
    _check_boxes(boxes)
    keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    if not view.covers_image(image_hw):
        keep &= drop_border_cut(boxes, view.box_tensor(boxes.device), image_hw, border_margin)
    if num_scales > 1:
        keep &= in_size_range(boxes, *valid_range)
    if finer_views:
        finer = torch.stack([v.box_tensor(boxes.device) for v in finer_views])
        chips = trusted_chip_area(finer, image_hw, border_margin)
        keep &= drop_small_covered(boxes, chips, small_drop_size / view.zoom)
    return keep


def _soft_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, sigma: float, score_thresh: float, max_det: int
) -> Tuple[Tensor, Tensor]:
    """
    Class-wise Gaussian Soft-NMS (Bodla et al., ICCV 2017), written by hand: neither torchvision
    nor Detectron2 has one. Within each class: repeatedly select the highest remaining score,
    decay the score of every remaining box of that class by ``exp(-iou^2 / sigma)`` and discard
    the boxes whose decayed score is ``< score_thresh``. Classes do not interact, so every class
    takes one step per iteration (one IoU row per class, O(C * R) memory): the iterations are the
    most boxes any one class selects, not the total, and each costs one host synchronisation.
    Once ``max_det`` boxes are selected, a box scoring below the ``max_det``-th best selected score
    leaves the race (scores only decay), so the classes stop about when the serial loop would.
    The result is the selections of all classes merged by selected score, the ``max_det`` best:
    what selecting the global best each time would give.

    Args:
        boxes (Tensor): (R, 4) XYXY boxes, any single frame.
        scores (Tensor): (R,) scores.
        classes (Tensor): (R,) int class ids.

    Returns:
        (Tensor, Tensor): (K,) int64 indices of the selected boxes, scores non-increasing (ties:
        lower index first), and their (K,) decayed scores.
    """
    device = boxes.device
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if len(boxes) == 0:
        return empty, scores[:0]
    scores = scores.clone().float()
    _, slot = torch.unique(classes, return_inverse=True)  # (R,) class slot 0..C-1
    num_classes = int(slot.max()) + 1
    alive = scores >= score_thresh
    all_boxes = Boxes(boxes)
    index = torch.arange(len(boxes), device=device)
    picked, picked_scores = [], []
    per_class = torch.zeros(num_classes, dtype=torch.int64, device=device)
    limit = max_det if max_det >= 0 else len(boxes)
    floor = -math.inf  # once max_det are picked: the max_det-th best picked score
    while True:
        # A box whose score is below ``floor`` can never enter the best max_det: scores only decay.
        active = alive & (per_class[slot] < limit) & (scores >= floor)
        if not bool(active.any()):
            break
        masked = torch.where(active, scores, scores.new_tensor(-math.inf))
        best_score = masked.new_full((num_classes,), -math.inf).scatter_reduce(0, slot, masked, "amax")
        is_best = active & (masked == best_score[slot])
        # The lowest index among a class's best (ties as a serial argmax would break them).
        best = torch.full((num_classes,), len(boxes), dtype=torch.int64, device=device)
        best = best.scatter_reduce(0, slot[is_best], index[is_best], "amin")
        has = best < len(boxes)
        chosen = best[has]  # (C',) one box per class that still has one
        picked.append(chosen)
        picked_scores.append(scores[chosen])
        per_class[slot[chosen]] += 1
        alive[chosen] = False
        # IoU of every box with the box its own class chose this step (0 for other classes).
        row = torch.full((num_classes,), -1, dtype=torch.int64, device=device)
        row[slot[chosen]] = torch.arange(len(chosen), device=device)
        iou = pairwise_iou(Boxes(boxes[chosen]), all_boxes)  # (C', R)
        own = row[slot]
        decay = torch.where(own >= 0, iou[own.clamp(min=0), index], iou.new_zeros(()))
        scores = torch.where(alive, scores * torch.exp(-(decay**2) / sigma), scores)
        alive &= scores >= score_thresh
        if max_det >= 0 and sum(len(p) for p in picked) >= max_det:
            floor = float(torch.cat(picked_scores).topk(max_det).values[-1])
    if not picked:
        return empty, scores[:0]
    keep = torch.cat(picked)
    kept_scores = torch.cat(picked_scores)
    # Merge the classes' sequences: by score, descending; ties by index (stable on sorted indices).
    by_index = torch.argsort(keep)
    keep, kept_scores = keep[by_index], kept_scores[by_index]
    order = torch.argsort(kept_scores, descending=True, stable=True)
    if max_det >= 0:
        order = order[:max_det]
    return keep[order], kept_scores[order]


def merge_indices(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    *,
    nms_thresh: float,
    max_det: int,
    method: str = "nms",
    soft_nms_sigma: float = 0.5,
    score_thresh: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """
    Merge the detections of all scales and chips of one image, as indices: the caller indexes
    its concatenated ``Instances`` with them, so every per-instance field (masks, keypoints, ...)
    follows its box.

    ``method="nms"``: drop scores ``< score_thresh``, then class-wise NMS at IoU ``nms_thresh``
    (``detectron2.layers.batched_nms``). ``method="soft_nms"``: class-wise Gaussian Soft-NMS with
    ``soft_nms_sigma`` (see :func:`_soft_nms`; ``nms_thresh`` is not used), dropping decayed
    scores ``< score_thresh``. Then keep the ``max_det`` highest scores (``max_det < 0``: all).

    Args:
        boxes (Tensor): (R, 4) XYXY detections, all in one frame (the original image frame).
        scores (Tensor): (R,) scores.
        classes (Tensor): (R,) int class ids.

    Returns:
        (Tensor, Tensor): (K,) int64 indices into the R detections, sorted by merged score,
        descending, and the (K,) merged scores (the input scores for NMS, decayed for Soft-NMS).
    """
    _check_boxes(boxes)
    if scores.shape != (boxes.shape[0],) or classes.shape != (boxes.shape[0],):
        raise ValueError(
            f"scores {tuple(scores.shape)} and classes {tuple(classes.shape)} must have shape "
            f"({boxes.shape[0]},) to match boxes {tuple(boxes.shape)}"
        )
    if method == "nms":
        idx = torch.nonzero(scores >= score_thresh).squeeze(1)
        keep = idx[batched_nms(boxes[idx], scores[idx], classes[idx], nms_thresh)]
        if max_det >= 0:
            keep = keep[:max_det]
        return keep, scores[keep]
    if method == "soft_nms":
        if not soft_nms_sigma > 0:
            raise ValueError(f"soft_nms_sigma must be > 0, got {soft_nms_sigma}")
        return _soft_nms(boxes, scores, classes, soft_nms_sigma, score_thresh, max_det)
    raise ValueError(f"Unknown merge method {method!r}; expected 'nms' or 'soft_nms'")


def merge_detections(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    **kwargs,
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    :func:`merge_indices` (same arguments), returning the kept (K, 4) boxes, (K,) scores (decayed
    for Soft-NMS) and (K,) classes, sorted by score, descending.
    """
    keep, kept_scores = merge_indices(boxes, scores, classes, **kwargs)
    return boxes[keep], kept_scores, classes[keep]
