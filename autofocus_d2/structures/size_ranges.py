"""Size ranges: which boxes a scale is responsible for (SNIP / AutoFocus valid ranges).

A box's size is ``sqrt(area)`` in pixels of the boxes' frame; a range is ``(lo, hi)`` with both
ends inclusive and ``hi < 0`` meaning no upper limit. The inference pipeline's stacking and the
SNIPER training chips both use these rules.
"""
import math
from typing import Sequence, Tuple

from detectron2.structures import Boxes
from torch import Tensor

__all__ = ["box_sizes", "in_size_range", "check_size_range"]


def box_sizes(boxes: Tensor) -> Tensor:
    """(R,) square root of the area of (R, 4) XYXY boxes, in pixels of the boxes' frame."""
    return Boxes(boxes).area().clamp(min=0).sqrt()


def check_size_range(valid_range: Sequence[float], name: str = "valid_range") -> Tuple[float, float]:
    """``valid_range`` as ``(lo, hi)`` floats; ValueError naming ``name`` if it is not a pair of
    numbers without NaN."""
    if len(valid_range) != 2 or any(math.isnan(float(v)) for v in valid_range):
        raise ValueError(f"{name} must be (lo, hi), -1 = no limit, got {tuple(valid_range)}")
    return float(valid_range[0]), float(valid_range[1])


def in_size_range(boxes: Tensor, lo: float, hi: float) -> Tensor:
    """
    Keep the boxes whose size ``sqrt(area)`` lies in ``[lo, hi]`` (both inclusive); ``hi < 0``
    means no upper limit. This is the valid range of a scale in SNIP/AutoFocus.

    Args:
        boxes (Tensor): (R, 4) XYXY boxes in any frame.
        lo, hi (float): limits in pixels of the boxes' frame.

    Returns:
        Tensor: (R,) bool, True for the boxes to keep.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (R, 4), got {tuple(boxes.shape)}")
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"size range must not contain NaN, got ({lo}, {hi})")
    size = box_sizes(boxes)
    keep = size >= lo
    if hi >= 0:
        keep &= size <= hi
    return keep
