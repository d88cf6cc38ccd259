"""Which views of one scale share a detector batch.

A batch is padded to the largest height and the largest width among its views (rounded up to the
backbone's size divisibility), and the detector pays for every padded pixel. FocusChips come in
every shape: a wide chip and a tall one in one batch cost their bounding square. So views are
grouped only where the padding stays small.
"""
import math
from typing import List, Sequence, Tuple

__all__ = ["padded_hw", "plan_view_batches"]


def padded_hw(hw: Tuple[int, int], size_divisibility: int) -> Tuple[int, int]:
    """(h, w) rounded up to a multiple of ``size_divisibility`` (as Detectron2's ImageList pads)."""
    d = max(1, int(size_divisibility))
    return int(math.ceil(hw[0] / d) * d), int(math.ceil(hw[1] / d) * d)


def plan_view_batches(
    out_hws: Sequence[Tuple[int, int]],
    *,
    max_batch_size: int,
    size_divisibility: int,
    max_padding: float,
    max_pixels: float = 0,
) -> List[List[int]]:
    """
    Group views into batches, largest views first.

    Args:
        out_hws: (h, w) of each view, in pixels of its scale (the detector's input size).
        max_batch_size: at most this many views per batch (>= 1).
        size_divisibility: the backbone's padding multiple (Detectron2's ``size_divisibility``).
        max_padding: a view joins a batch only if the batch's padded area stays within
            ``(1 + max_padding)`` times the sum of its views' own padded areas (0: only views of one
            padded shape share a batch; ``inf``: fill batches in size order, as plain batching).
        max_pixels: a view joins a batch only if the padded batch tensor (views x padded height x
            padded width, pixels of the scale) stays within this; a view larger on its own runs
            alone. 0 = no limit. Bounds the detector's peak memory per pass.

    Returns:
        lists of indices into ``out_hws``; every index exactly once; within a batch, by decreasing
        area. Deterministic (ties broken by index). No batch of two or more views exceeds
        ``max_pixels`` (when set).
    """
    if int(max_batch_size) != max_batch_size or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size}")
    if not max_padding >= 0:
        raise ValueError(f"max_padding must be >= 0 (a fraction of the batch's own area), got {max_padding}")
    if not max_pixels >= 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
    padded = [padded_hw(hw, size_divisibility) for hw in out_hws]
    for i, (h, w) in enumerate(out_hws):
        if h <= 0 or w <= 0:
            raise ValueError(f"view {i} has an empty size {(h, w)}")
    order = sorted(range(len(out_hws)), key=lambda i: (-padded[i][0] * padded[i][1], i))
    batches: List[List[int]] = []
    shapes: List[Tuple[int, int, int]] = []  # per batch: max h, max w, sum of own padded areas
    for i in order:
        h, w = padded[i]
        best, best_cost = -1, None
        for b, (bh, bw, own) in enumerate(shapes):
            if len(batches[b]) >= max_batch_size:
                continue
            nh, nw = max(bh, h), max(bw, w)
            area = nh * nw * (len(batches[b]) + 1)
            if area > (1.0 + max_padding) * (own + h * w) or (max_pixels and area > max_pixels):
                continue
            cost = area - bh * bw * len(batches[b])  # what adding this view costs
            if best_cost is None or cost < best_cost:
                best, best_cost = b, cost
        if best < 0:
            batches.append([i])
            shapes.append((h, w, h * w))
        else:
            bh, bw, own = shapes[best]
            batches[best].append(i)
            shapes[best] = (max(bh, h), max(bw, w), own + h * w)
    return batches
