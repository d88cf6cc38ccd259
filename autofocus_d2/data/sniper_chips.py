"""SNIPER training chips: where the 512 x 512 chips of each training scale are cut.

Frames used in this module:

* **original frame**: pixels of the image as the dataset stores it, size ``image_hw = (H, W)``.
  Boxes, proposals and the returned chips are XYXY in this frame.
* **scale frame**: pixels of the whole image zoomed by ``zoom`` (pixels of the scale per original
  pixel), size ``(H * zoom, W * zoom)``. The chip size and the grid stride are in this frame.

Chip placement (SNIPER, Singh et al., NeurIPS 2018): candidate chips are ``chip_size`` squares of
the scale frame whose top-left corners lie on a ``stride`` grid, the last position of each axis
flush with the image border; a side of the image shorter than a chip is spanned whole. Chips are
then picked greedily, the candidate holding the most not-yet-covered boxes first.

A box is held by a chip ("contained") when, along each axis, either the box fits in the chip and
lies inside it, or the box is longer than the chip and the chip lies inside the box (it covers as
much of the box as any chip of that size can). The grid alone cannot always achieve this (a box
a little shorter than a chip fits between grid positions only within less than one stride), so,
for every box no grid position holds along an axis, the position centred on the box is added to
that axis' candidate positions. This is the only departure from the plain grid.

The greedy set cover is written by hand on a sparse containment matrix (a list of (candidate,
box) pairs): neither Detectron2 nor torchvision has one, and a dense (candidates x boxes) matrix
would not fit in memory for very large images.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..structures.size_ranges import check_size_range, in_size_range

__all__ = ["positive_chips", "negative_chips", "chip_box_validity", "chips_holding"]

# Tolerance of the containment tests, in pixels of the scale frame (float64 arithmetic).
_TOL = 1e-6
# chip_box_validity: tolerance of "lies inside the chip" and share of the best possible coverage
# a chip must reach to hold a box longer than a chip side.
_INSIDE_TOL = 1.0
_COVER_SHARE = 0.99


def _check_boxes(boxes: Tensor, name: str) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be a tensor of shape (N, 4), got {shape}")
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def _check_args(image_hw: Sequence[int], zoom: float, chip_size: int, stride: int) -> Tuple[int, int]:
    if len(image_hw) != 2 or any(int(v) != v or v <= 0 for v in image_hw):
        raise ValueError(f"image_hw must be two positive integers (H, W), got {tuple(image_hw)}")
    if not (zoom > 0 and math.isfinite(zoom)):
        raise ValueError(f"zoom must be a positive finite number, got {zoom}")
    if int(chip_size) != chip_size or chip_size < 1:
        raise ValueError(f"chip_size must be a positive integer, got {chip_size}")
    if int(stride) != stride or not 1 <= stride <= chip_size:
        raise ValueError(f"stride must be an integer in [1, chip_size={chip_size}], got {stride}")
    return int(image_hw[0]), int(image_hw[1])


def _clip(boxes: Tensor, image_hw: Tuple[int, int]) -> Tensor:
    """(M, 4) XYXY boxes clipped to ``[0, W] x [0, H]`` (any frame whose size is image_hw)."""
    h, w = image_hw
    limits = boxes.new_tensor([w, h, w, h])
    return torch.minimum(boxes.clamp(min=0), limits)


def _nonempty(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _holding_range(positions: Tensor, lo: Tensor, hi: Tensor, side: float) -> Tuple[Tensor, Tensor]:
    """
    Along one axis of the scale frame: for each of M intervals ``[lo, hi]`` (inside the image),
    the index range ``[first, last)`` into the sorted (P,) chip ``positions`` of the chips that
    hold it (see the module docstring). Chips of an axis shorter than ``side`` start at 0 and
    span the axis, so they hold everything.
    """
    fits = (hi - lo) <= side + _TOL
    # Fitting interval: p in [hi - side, lo]; longer interval: p in [lo, hi - side].
    low = torch.where(fits, hi - side, lo) - _TOL
    high = torch.where(fits, lo, hi - side) + _TOL
    first = torch.searchsorted(positions, low, side="left")
    last = torch.searchsorted(positions, high, side="right")
    return first, torch.maximum(last, first)


def _axis_positions(length: float, side: float, stride: int, lo: Tensor, hi: Tensor) -> Tensor:
    """
    Sorted (P,) float64 chip start positions along one axis of ``length`` scale pixels: the
    ``stride`` grid below ``length - side`` plus the flush position ``length - side`` (only 0 when
    the axis is not longer than a chip), plus, for each interval ``[lo, hi]`` no grid position
    holds, the position centred on it (clamped into the image).
    """
    if length <= side:
        return torch.zeros(1, dtype=torch.float64)
    last = length - side
    grid = torch.arange(0, math.ceil(last / stride), dtype=torch.float64) * stride
    grid = torch.cat([grid[grid < last], grid.new_tensor([last])])
    first, end = _holding_range(grid, lo, hi, side)
    missing = end == first
    if bool(missing.any()):
        centred = ((lo[missing] + hi[missing] - side) / 2).clamp(0.0, last)
        grid = torch.unique(torch.cat([grid, centred]))  # sorted
    return grid


def _greedy_cover(
    boxes: Tensor, scale_hw: Tuple[float, float], chip_size: int, stride: int
) -> Tuple[Tensor, Tensor]:
    """
    Greedy SNIPER chips holding (M, 4) XYXY ``boxes`` of the scale frame, each non-empty and
    inside the image of ``scale_hw`` = (h, w) scale pixels (float64).

    Returns:
        (Tensor, Tensor): (N, 4) float64 XYXY chips in the scale frame, clipped to the image, in
        the order they were picked; (N,) int64 number of the M boxes each chip holds (all of
        them, not only those it covered first).
    """
    height, width = scale_hw
    side = float(chip_size)
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, 4)), torch.zeros(0, dtype=torch.int64)
    xs = _axis_positions(width, side, stride, boxes[:, 0], boxes[:, 2])
    ys = _axis_positions(height, side, stride, boxes[:, 1], boxes[:, 3])
    x_first, x_end = _holding_range(xs, boxes[:, 0], boxes[:, 2], side)
    y_first, y_end = _holding_range(ys, boxes[:, 1], boxes[:, 3], side)
    nx, ny = x_end - x_first, y_end - y_first
    if bool(((nx == 0) | (ny == 0)).any()):  # cannot happen: _axis_positions adds the positions
        raise AssertionError("a box has no holding chip candidate")

    # Sparse containment matrix: one (candidate, box) pair per chip position holding a box,
    # enumerated box by box over the rectangle of positions holding it.
    counts = nx * ny
    box_of_pair = torch.repeat_interleave(torch.arange(boxes.shape[0]), counts)
    offsets = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum())) - offsets[box_of_pair]
    ix = x_first[box_of_pair] + local % nx[box_of_pair]
    iy = y_first[box_of_pair] + local // nx[box_of_pair]
    # Candidates only where they hold a box, numbered in row-major grid order (y, then x).
    keys, cand_of_pair = torch.unique(iy * xs.numel() + ix, sorted=True, return_inverse=True)

    num_cand = keys.numel()
    held = torch.bincount(cand_of_pair, minlength=num_cand)
    uncovered = torch.ones(boxes.shape[0], dtype=torch.bool)
    picked = []
    while bool(uncovered.any()):
        gain = torch.bincount(cand_of_pair[uncovered[box_of_pair]], minlength=num_cand)
        best = int(torch.argmax(gain))  # the first maximum: row-major order breaks ties
        picked.append(best)
        uncovered[box_of_pair[cand_of_pair == best]] = False
    picked_t = torch.tensor(picked, dtype=torch.int64)
    x0 = xs[keys[picked_t] % xs.numel()]
    y0 = ys[keys[picked_t] // xs.numel()]
    chips = torch.stack(
        [x0, y0, (x0 + side).clamp(max=width), (y0 + side).clamp(max=height)], dim=1
    )
    return chips, held[picked_t]


def _cover_in_original(
    boxes: Tensor, image_hw: Tuple[int, int], zoom: float, chip_size: int, stride: int
) -> Tuple[Tensor, Tensor]:
    """:func:`_greedy_cover` of (M, 4) boxes of the original frame (clipped, non-empty);
    returns float64 chips of the original frame and the number of boxes each holds."""
    height, width = image_hw
    scaled = boxes.to(torch.float64).cpu() * zoom
    chips, held = _greedy_cover(scaled, (height * zoom, width * zoom), chip_size, stride)
    chips = chips / zoom
    limits = chips.new_tensor([width, height, width, height])
    return torch.minimum(chips, limits), held


def positive_chips(
    gt_boxes: Tensor,
    *,
    image_hw: Tuple[int, int],
    zoom: float,
    chip_size: int = 512,
    valid_range: Sequence[float],
    stride: int = 32,
) -> Tensor:
    """
    SNIPER's positive chips of one image at one training scale.

    The boxes are clipped to the image; those with an empty clipped box are skipped, the others
    are VALID when their clipped ``sqrt(area)`` lies in ``valid_range`` (inclusive, as
    :func:`autofocus_d2.structures.in_size_range`). Chips are picked greedily
    among the candidates (module docstring), the one holding the most not-yet-covered valid
    boxes first (ties: the first in row-major order), until every valid box is held.

    Guarantees: every valid box lies inside a returned chip, or, if longer than a chip along
    an axis, is covered by one over ``min(w, side) * min(h, side)`` (``side = chip_size /
    zoom``), as much as any chip can; every chip holds a valid box; the result is deterministic.

    Args:
        gt_boxes (Tensor): (M, 4) XYXY boxes in the original frame.
        image_hw: (H, W) of the original image, in pixels.
        zoom (float): pixels of the training scale per original pixel (> 0).
        chip_size (int): chip side in pixels of the scale frame.
        valid_range: (lo, hi) of ``sqrt(area)`` in original pixels; -1 = no limit.
        stride (int): grid of candidate positions, in pixels of the scale frame (<= chip_size).

    Returns:
        Tensor: (N, 4) float32 XYXY chips in the original frame, inside ``[0, W] x [0, H]``, in
        the order picked; (0, 4) when no box is valid. Sides are ``chip_size / zoom``, or the
        whole image side where the zoomed image is shorter than a chip.
    """
    _check_boxes(gt_boxes, "gt_boxes")
    image_hw = _check_args(image_hw, zoom, chip_size, stride)
    lo, hi = check_size_range(valid_range)
    boxes = _clip(gt_boxes.to(torch.float64), image_hw)
    boxes = boxes[_nonempty(boxes)]
    boxes = boxes[in_size_range(boxes, lo, hi)]
    chips, _ = _cover_in_original(boxes, image_hw, zoom, int(chip_size), int(stride))
    return chips.to(device=gt_boxes.device, dtype=torch.float32)


def negative_chips(
    proposals: Tensor,
    *,
    image_hw: Tuple[int, int],
    zoom: float,
    chip_size: int = 512,
    stride: int = 32,
    positive_chips: Tensor,
    min_proposals: int,
    valid_range: Optional[Sequence[float]] = None,
) -> Tensor:
    """
    SNIPER's negative chips of one image at one training scale: regions where a (briefly
    trained) RPN fires but which no positive chip covers.

    The proposals are clipped to the image (empty ones skipped), restricted to ``valid_range``
    when given (as the official code does), and those lying inside a positive chip (1e-6 px
    tolerance) are dropped. The rest are covered with the greedy machinery of
    :func:`positive_chips`; a chip is kept when it holds at least ``min_proposals`` of them.

    Args:
        proposals (Tensor): (R, 4) XYXY proposals in the original frame.
        image_hw, zoom, chip_size, stride: as in :func:`positive_chips`.
        positive_chips (Tensor): (P, 4) XYXY positive chips of the same scale, original frame.
        min_proposals (int): >= 1.
        valid_range: optional (lo, hi) of ``sqrt(area)`` in original pixels, -1 = no limit.

    Returns:
        Tensor: (N, 4) float32 XYXY chips in the original frame, in the order picked.
    """
    _check_boxes(proposals, "proposals")
    _check_boxes(positive_chips, "positive_chips")
    image_hw = _check_args(image_hw, zoom, chip_size, stride)
    if int(min_proposals) != min_proposals or min_proposals < 1:
        raise ValueError(f"min_proposals must be an integer >= 1, got {min_proposals}")
    boxes = _clip(proposals.to(torch.float64).cpu(), image_hw)
    boxes = boxes[_nonempty(boxes)]
    if valid_range is not None:
        boxes = boxes[in_size_range(boxes, *check_size_range(valid_range))]
    pos = positive_chips.to(torch.float64).cpu()
    inside = (boxes[:, None, :2] >= pos[None, :, :2] - _TOL) & (
        boxes[:, None, 2:] <= pos[None, :, 2:] + _TOL
    )
    boxes = boxes[~inside.all(dim=2).any(dim=1)]
    chips, held = _cover_in_original(boxes, image_hw, zoom, int(chip_size), int(stride))
    chips = chips[held >= min_proposals]
    return chips.to(device=proposals.device, dtype=torch.float32)


def chips_holding(boxes: Tensor, chips: Tensor) -> Tensor:
    """(M,) bool: whether each of the (M, 4) ``boxes`` lies inside one of the (N, 4) ``chips``
    (XYXY, one frame; 1 px tolerance, as :func:`chip_box_validity`)."""
    _check_boxes(boxes, "boxes")
    _check_boxes(chips, "chips")
    if len(boxes) == 0 or len(chips) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    b, c = boxes.to(torch.float64)[:, None], chips.to(device=boxes.device, dtype=torch.float64)[None]
    return ((b[..., :2] >= c[..., :2] - _INSIDE_TOL) & (b[..., 2:] <= c[..., 2:] + _INSIDE_TOL)).all(2).any(1)


def chip_box_validity(
    boxes: Tensor, chip: Tensor, valid_range: Sequence[float], chip_side: float
) -> Tensor:
    """
    Which boxes a training chip trains on (VALID); every other box overlapping the chip is to
    be IGNORED (no loss near it), not treated as background.

    A box is VALID in the chip iff its ``sqrt(area)`` lies in ``valid_range`` (inclusive) and
    either it lies inside the chip (1 px tolerance), or it is longer than ``chip_side`` along an
    axis and the chip covers at least 99% of ``min(w, chip_side) * min(h, chip_side)`` of it (as
    much as a chip of that side can).

    Args:
        boxes (Tensor): (M, 4) XYXY boxes in the original frame (clip them to the image first,
            as :func:`positive_chips` does).
        chip (Tensor): (4,) XYXY chip in the original frame.
        valid_range: (lo, hi) of ``sqrt(area)`` in original pixels; -1 = no limit.
        chip_side (float): side of a full chip in original pixels (``chip_size / zoom``).

    Returns:
        Tensor: (M,) bool, True for the valid boxes.
    """
    _check_boxes(boxes, "boxes")
    if not isinstance(chip, Tensor) or chip.shape != (4,):
        raise ValueError(f"chip must be a tensor of shape (4,), got {getattr(chip, 'shape', chip)}")
    if not (chip_side > 0 and math.isfinite(chip_side)):
        raise ValueError(f"chip_side must be a positive finite number, got {chip_side}")
    lo, hi = check_size_range(valid_range)
    boxes = boxes.to(torch.float64)
    chip = chip.to(device=boxes.device, dtype=torch.float64)
    in_range = in_size_range(boxes, lo, hi)
    inside = ((boxes[:, :2] >= chip[:2] - _INSIDE_TOL) & (boxes[:, 2:] <= chip[2:] + _INSIDE_TOL)).all(1)
    wh = boxes[:, 2:] - boxes[:, :2]
    overlap = (torch.minimum(boxes[:, 2:], chip[2:]) - torch.maximum(boxes[:, :2], chip[:2])).clamp(min=0)
    best = wh.clamp(max=chip_side).prod(dim=1)
    covered = (wh > chip_side).any(dim=1) & (overlap.prod(dim=1) >= _COVER_SHARE * best)
    return in_range & (inside | covered)
