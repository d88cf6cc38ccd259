"""FocusChip generation from a predicted focus map (AutoFocus, Algorithm 1).

Frames used in this module:

* **cell frame**: integer (row, col) indices into the focus map; cell ``(i, j)`` at stride ``s``
  covers the pixels ``[j*s, (j+1)*s) x [i*s, (i+1)*s)`` of the image the map was predicted on.
* **scale frame**: pixels of the (resized) image the map was predicted on, whose valid size is
  ``image_hw = (H, W)``. Chips are returned in this frame, as XYXY boxes.

Connected components and box merging are written by hand with torch ops: neither Detectron2 nor
torchvision has them, and SciPy/OpenCV would tie the code to the CPU.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.structures import Boxes

__all__ = ["connected_components", "generate_focus_chips", "merge_overlapping_boxes"]


def _check_image_hw(image_hw: Tuple[int, int]) -> Tuple[int, int]:
    if len(image_hw) != 2 or any(int(v) != v or v <= 0 for v in image_hw):
        raise ValueError(f"image_hw must be two positive integers (H, W), got {tuple(image_hw)}")
    return int(image_hw[0]), int(image_hw[1])


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")


def _sort_boxes(boxes: Tensor) -> Tensor:
    """
    Sort (N, 4) XYXY boxes lexicographically by (y0, x0, y1, x1); the frame is unchanged.
    """
    order = torch.arange(boxes.shape[0], device=boxes.device)
    for col in (2, 3, 0, 1):  # least significant key first; stable sorts keep earlier keys
        order = order[torch.sort(boxes[order, col], stable=True).indices]
    return boxes[order]


def _window_max(x: Tensor, lo: int, hi: int) -> Tensor:
    """
    Maximum of an (h, w) tensor over the window ``[p - lo, p + hi]`` along both axes, with zero
    padding; returns (h, w) in the same cell frame.

    Separable max over shifted slices: CPU ``max_pool2d`` on a single-channel map is much slower
    (docs/inference.md, "FocusChip generation cost").
    """
    h, w = x.shape
    x = F.pad(x[None], (lo, hi, lo, hi))[0]
    rows = x[:, 0:w]
    for d in range(1, lo + hi + 1):
        rows = torch.maximum(rows, x[:, d : d + w])
    out = rows[0:h]
    for d in range(1, lo + hi + 1):
        out = torch.maximum(out, rows[d : d + h])
    return out


def _dilate(mask: Tensor, size: int) -> Tensor:
    """
    Binary dilation of an (h, w) bool mask with a ``size`` x ``size`` square kernel.

    For even sizes the window around cell p spans ``[p - (size-1)//2, p + size//2]``.
    Returns an (h, w) bool mask in the same cell frame.
    """
    if size == 1:
        return mask
    return _window_max(mask.to(torch.uint8), (size - 1) // 2, size // 2) > 0


def connected_components(mask: Tensor, jumps: int = 4) -> Tensor:
    """
    8-connected components of a binary grid, by parallel label propagation (what
    :func:`generate_focus_chips` groups the dilated focus cells with).

    Each foreground cell starts with label ``1 + its flat index``, so a label names a cell of the
    same component. One round: every cell takes the maximum label of its 3x3 neighbourhood, the
    cell named by its old label ("root") takes that maximum too (hooking), then every cell adopts
    the label of the cell its label names, ``jumps`` times (pointer jumping). Rounds repeat until
    nothing changes; hooking and jumping make their number grow roughly with the log of the
    component diameter (5 rounds for a 250x250 serpentine) instead of linearly.

    Args:
        mask (Tensor): (h, w) bool, in the cell frame (one cell per FocusPixel; any grid works),
            on any device.
        jumps (int): pointer-jumping steps per round (>= 0); changes the speed, not the result.

    Returns:
        Tensor: (h, w) int64 labels on ``mask``'s device, in the same frame; 0 for background,
        otherwise ``1 + `` the largest flat (row-major) index of the component's cells
        (deterministic), so two cells share a label exactly when they are 8-connected.
    """
    h, w = mask.shape
    # Labels must be exact in this dtype: float32 holds integers up to 2**24 exactly.
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    fg = mask.reshape(-1).to(dtype)
    labels = torch.arange(1, h * w + 1, dtype=dtype, device=mask.device) * fg
    while True:
        pooled = _window_max(labels.view(h, w), 1, 1).reshape(-1) * fg
        # Background cells carry label 0 and pooled 0: they point at cell 0 and change nothing.
        new = labels.scatter_reduce(0, (labels.long() - 1).clamp_(min=0), pooled, reduce="amax")
        new = torch.maximum(new, pooled)
        for _ in range(jumps):
            # index_select: much faster than ``new[index]`` for such skewed indices on CPU.
            new = new.index_select(0, (new.long() - 1).clamp_(min=0)) * fg
        if torch.equal(new, labels):
            return labels.view(h, w).long()
        labels = new


def _component_cell_boxes(labels: Tensor) -> Tensor:
    """
    Enclosing cell ranges of labelled components.

    Args:
        labels (Tensor): (h, w) int64 from :func:`connected_components`: 0 for background,
            otherwise ``1 +`` the flat index of the component's root cell.

    Returns:
        Tensor: (K, 4) int64 ``(col0, row0, col1, row1)``, inclusive, in the cell frame, one row
        per component, ordered by root cell.
    """
    h, w = labels.shape
    flat = labels.reshape(-1)
    cells = torch.nonzero(flat).squeeze(1)
    # A root is labelled with its own index: no sort (torch.unique) is needed to enumerate them.
    roots = torch.nonzero(flat == torch.arange(1, h * w + 1, device=flat.device)).squeeze(1)
    root_of_cell = flat.index_select(0, cells) - 1
    coords = ((cells % w, "amin"), (cells // w, "amin"), (cells % w, "amax"), (cells // w, "amax"))
    out = [
        flat.new_zeros(h * w)
        .scatter_reduce(0, root_of_cell, coord, reduce=reduce, include_self=False)
        .index_select(0, roots)
        for coord, reduce in coords
    ]
    return torch.stack(out, dim=1)


def _enlarge_to_min_size(boxes: Tensor, min_size: float, image_hw: Tuple[int, int]) -> Tensor:
    """
    Grow every side shorter than ``min_size`` to ``min_size`` around the box centre, shifting
    (not cutting) the grown side so that it stays inside the image. If the image side itself is
    shorter than ``min_size``, the side spans the whole image side instead.

    Args:
        boxes (Tensor): (N, 4) XYXY floats inside the image, in the scale frame.
        image_hw: (H, W) of the image in the scale frame.

    Returns:
        Tensor: (N, 4) XYXY in the scale frame; each output box contains its input box.
    """
    out = boxes.clone()
    height, width = image_hw
    for lo, hi, side in ((0, 2, width), (1, 3, height)):
        small = (boxes[:, hi] - boxes[:, lo]) < min_size
        if side <= min_size:
            new_lo = torch.zeros_like(boxes[:, lo])
            new_hi = torch.full_like(boxes[:, hi], float(side))
        else:
            centre = (boxes[:, lo] + boxes[:, hi]) / 2
            new_lo = (centre - min_size / 2).clamp(min=0.0, max=side - min_size)
            new_hi = new_lo + min_size
        # min/max guard the containment of the input box against rounding.
        out[:, lo] = torch.where(small, torch.minimum(new_lo, boxes[:, lo]), boxes[:, lo])
        out[:, hi] = torch.where(small, torch.maximum(new_hi, boxes[:, hi]), boxes[:, hi])
    return out


def _pairwise_overlap(boxes: Tensor) -> Tensor:
    """
    (N, N) bool: whether boxes i and j of an (N, 4) XYXY tensor intersect with positive area.

    Like ``detectron2.structures.pairwise_intersection(...) > 0`` but in the boxes' own dtype
    (``Boxes`` casts to float32, which could turn a tiny float64 overlap into a touch).
    """
    wh = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - torch.maximum(
        boxes[:, None, :2], boxes[None, :, :2]
    )
    return (wh > 0).all(dim=2)


def _graph_components(adjacency: Tensor) -> Tensor:
    """
    Connected components of an undirected graph given as an (N, N) bool adjacency matrix with a
    true diagonal. Returns (N,) int64 component ids in ``[0, K)``.
    """
    n = adjacency.shape[0]
    labels = torch.arange(n, device=adjacency.device)
    neg = torch.full((n, n), -1, dtype=labels.dtype, device=labels.device)
    while True:
        new = torch.where(adjacency, labels[None, :], neg).amax(dim=1)
        new = new.index_select(0, new)  # pointer jumping: labels are nodes of the same component
        if torch.equal(new, labels):
            break
        labels = new
    return torch.unique(labels, return_inverse=True)[1]


def merge_overlapping_boxes(boxes: Tensor) -> Tensor:
    """
    Replace every group of overlapping boxes by its enclosing box, repeatedly, until no two boxes
    overlap. Two boxes overlap when their intersection has positive area: boxes that only share
    an edge or a corner are left apart.

    Args:
        boxes (Tensor): (N, 4) XYXY boxes, all in one coordinate frame (any frame).

    Returns:
        Tensor: (M, 4), M <= N, XYXY in the same frame and dtype, pairwise non-overlapping, sorted
        by (y0, x0, y1, x1). Every input box lies inside one output box, and the result does not
        depend on the order of the input boxes.
    """
    _check_boxes(boxes)
    while boxes.shape[0] > 1:
        overlap = _pairwise_overlap(boxes)
        overlap.fill_diagonal_(True)
        if int(overlap.sum()) == boxes.shape[0]:
            break
        group = _graph_components(overlap)
        num = int(group.max()) + 1
        merged = boxes.new_zeros((num, 4))
        for k, reduce in enumerate(("amin", "amin", "amax", "amax")):
            merged[:, k] = merged[:, k].scatter_reduce(
                0, group, boxes[:, k], reduce=reduce, include_self=False
            )
        boxes = merged
    return _sort_boxes(boxes)


def generate_focus_chips(
    focus_prob: Tensor,
    *,
    stride: int,
    threshold: float,
    dilation: int,
    min_size: float,
    image_hw: Tuple[int, int],
) -> Tensor:
    """
    FocusChips of one image (paper Algorithm 1): binarize the focus map, dilate it, take the
    8-connected components, box them, enlarge small boxes to ``min_size``, merge overlapping boxes.

    A cell is a focus cell when ``focus_prob >= threshold`` (the comparison of the authors' code).
    Any finite threshold is accepted: ``threshold > max(focus_prob)`` (e.g. above 1 for
    probabilities) gives no chips and ``threshold <= 0`` makes every valid cell a focus cell.
    Cells whose region starts at or beyond the valid image (batch padding) are ignored.

    Args:
        focus_prob (Tensor): (h, w) focus probabilities in the cell frame of an image at one
            scale; ``h >= ceil(H / stride)`` and ``w >= ceil(W / stride)``.
        stride (int): pixels of the scale frame per focus-map cell.
        threshold (float): focus-cell threshold (inclusive).
        dilation (int): side of the square dilation kernel, in cells; 1 means no dilation.
        min_size (float): minimum chip side in pixels of the scale frame.
        image_hw: valid (H, W) of the image in pixels of the scale frame.

    Returns:
        Tensor: (N, 4) float32 XYXY chips in the scale frame, on ``focus_prob``'s device, inside
        ``[0, W] x [0, H]``, pairwise non-overlapping, sorted by (y0, x0, y1, x1). Each side is
        ``>= min_size`` unless the image side is shorter (then it spans the image side). Each
        chip contains the (image-clipped) region of at least one focus cell, and every focus
        cell's region lies inside a chip.
    """
    if focus_prob.dim() != 2:
        raise ValueError(f"focus_prob must be 2-D (h, w), got shape {tuple(focus_prob.shape)}")
    if not bool(torch.isfinite(focus_prob).all()):
        raise ValueError("focus map contains NaN or inf values")
    if int(stride) != stride or stride <= 0:
        raise ValueError(f"stride must be a positive integer, got {stride}")
    if int(dilation) != dilation or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation}")
    if not min_size >= 0 or math.isinf(min_size):  # also rejects NaN
        raise ValueError(f"min_size must be finite and >= 0, got {min_size}")
    if math.isnan(threshold):
        raise ValueError(f"threshold must not be NaN, got {threshold}")
    height, width = _check_image_hw(image_hw)
    stride, dilation = int(stride), int(dilation)

    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    if focus_prob.shape[0] < rows or focus_prob.shape[1] < cols:
        raise ValueError(
            f"focus_prob of shape {tuple(focus_prob.shape)} at stride {stride} does not cover "
            f"image_hw {(height, width)}: at least ({rows}, {cols}) cells are needed"
        )
    mask = _dilate(focus_prob[:rows, :cols] >= threshold, dilation)
    cells = _component_cell_boxes(connected_components(mask))

    # Cells -> pixels of the scale frame, clipped to the image. float64 keeps the arithmetic
    # of the enlargement exact enough for the containment guarantees.
    boxes = cells.to(torch.float64)
    boxes[:, :2] *= stride
    boxes[:, 2:] = (boxes[:, 2:] + 1) * stride
    boxes[:, 2].clamp_(max=width)
    boxes[:, 3].clamp_(max=height)
    boxes = merge_overlapping_boxes(_enlarge_to_min_size(boxes, float(min_size), (height, width)))
    chips = Boxes(boxes.to(torch.float32))
    chips.clip((height, width))
    return chips.tensor
