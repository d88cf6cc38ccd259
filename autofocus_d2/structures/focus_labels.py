"""FocusPixel label assignment (AutoFocus paper, section "FocusPixels")."""
from typing import Optional, Sequence, Tuple, Union

import torch
from detectron2.structures import Boxes

__all__ = [
    "focus_pixel_targets",
    "focus_size_range",
    "SMALL_MIN_FRAMES",
    "FOCUS_POSITIVE",
    "FOCUS_NEGATIVE",
    "FOCUS_IGNORE",
]

FOCUS_POSITIVE = 1
FOCUS_NEGATIVE = 0
FOCUS_IGNORE = -1

# Frames in which MODEL.FOCUS_HEAD.SMALL_RANGE[0] (the smallest FocusPixel object) is measured.
SMALL_MIN_FRAMES = ("input", "next_scale")


def focus_size_range(
    small_range: Sequence[float], zoom_step: float, small_min_frame: str = "input"
) -> Tuple[float, float]:
    """
    The FocusPixel size range of one input, sqrt(area) in pixels of the input that predicts the
    map (the frame :func:`focus_pixel_targets` works in).

    With ``small_min_frame`` "input" (the paper's rule) ``small_range`` is returned as it is. With
    "next_scale" the lower bound is measured at the next finer scale of the chain: an object is a
    FocusPixel when the next scale, ``zoom_step`` times finer, sees it at ``small_range[0]`` pixels
    or more, so the bound in the input's pixels is ``small_range[0] / zoom_step``. A step below 1
    (no finer scale, or the finest scale) counts as 1: the rule is then the paper's. The upper
    bound is always in input pixels (what the next scale must take over).

    Args:
        small_range: [min, max] of sqrt(area) (MODEL.FOCUS_HEAD.SMALL_RANGE), pixels.
        zoom_step: zoom of the next finer scale divided by the zoom of the input (>= 1 in a
            coarse-to-fine chain), dimensionless.
        small_min_frame: "input" or "next_scale" (MODEL.FOCUS_HEAD.SMALL_MIN_FRAME).

    Returns:
        (min, max) in input pixels.
    """
    if small_min_frame not in SMALL_MIN_FRAMES:
        raise ValueError(f"small_min_frame must be one of {SMALL_MIN_FRAMES}, got {small_min_frame!r}")
    lo, hi = float(small_range[0]), float(small_range[1])
    if small_min_frame == "next_scale":
        lo = lo / max(1.0, float(zoom_step))
    return lo, hi


def _cell_overlap(lo: torch.Tensor, hi: torch.Tensor, num_cells: int, stride: int) -> torch.Tensor:
    """(N, num_cells) bool: does cell k's span [k*stride, (k+1)*stride) overlap (lo, hi) with
    positive length? lo, hi: (N,) box extents along one axis, in input-image pixels."""
    starts = torch.arange(num_cells, device=lo.device, dtype=lo.dtype) * stride
    return (starts[None, :] < hi[:, None]) & (starts[None, :] + stride > lo[:, None])


def _box_tensor(boxes: Union[torch.Tensor, Boxes], name: str) -> torch.Tensor:
    tensor = boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes)
    if tensor.ndim != 2 or tensor.shape[-1] != 4:
        raise ValueError(f"{name} must be (N, 4) XYXY, got shape {tuple(tensor.shape)}")
    return tensor


def focus_pixel_targets(
    gt_boxes: Union[torch.Tensor, Boxes],
    *,
    image_hw: Tuple[int, int],
    feature_hw: Tuple[int, int],
    stride: int,
    small_range: Sequence[float] = (5, 64),
    ignore_max: float = 90,
    ignored_boxes: Optional[Union[torch.Tensor, Boxes]] = None,
) -> torch.Tensor:
    """
    FocusPixel labels of one image on a feature map.

    Cell (i, j) of a map with stride ``s`` covers [j*s, (j+1)*s) x [i*s, (i+1)*s) of the input
    image. With ``r = sqrt(area)`` of a box, a cell overlapping any box with
    ``small_range[0] <= r <= small_range[1]`` is positive (1); otherwise a cell overlapping any box
    with ``r < small_range[0]`` or ``small_range[1] < r <= ignore_max`` is ignored (-1); every other
    cell is negative (0). Cells whose region starts at or beyond the valid image (batch padding)
    are ignored. Cells overlapping any of ``ignored_boxes`` (same frame; SNIPER's out-of-range
    boxes, when their cells are to be ignored) are ignored unless positive.

    Args:
        gt_boxes: (N, 4) XYXY boxes (Tensor or Boxes) in the frame of the network input image
            (after the data loader's resize, before batch padding).
        image_hw: (H, W) of the valid, unpadded input image, in pixels.
        feature_hw: (Hf, Wf) of the (padded) feature map, in cells.
        stride: feature stride in input-image pixels per cell.
        small_range: [min, max] of r for FocusPixels, in input-image pixels.
        ignore_max: objects with small_range[1] < r <= ignore_max are ignored.
        ignored_boxes: optional (K, 4) XYXY boxes whose cells are ignored (not positive ones).

    Returns:
        LongTensor[Hf, Wf] of labels in {1, 0, -1}, on gt_boxes' device.
    """
    boxes = _box_tensor(gt_boxes, "gt_boxes")
    extra = boxes.new_zeros((0, 4)) if ignored_boxes is None else _box_tensor(ignored_boxes, "ignored_boxes")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    lo, hi = float(small_range[0]), float(small_range[1])
    if not 0 <= lo <= hi <= ignore_max:
        raise ValueError(
            f"need 0 <= small_range[0] <= small_range[1] <= ignore_max, got {small_range}, {ignore_max}"
        )
    feat_h, feat_w = int(feature_hw[0]), int(feature_hw[1])
    img_h, img_w = int(image_hw[0]), int(image_hw[1])
    device = boxes.device
    num_gt = boxes.shape[0]
    boxes = torch.cat([boxes.float(), extra.float().to(device)])  # gt boxes, then ignored_boxes
    is_gt = torch.arange(boxes.shape[0], device=device) < num_gt

    sizes = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    rows = _cell_overlap(boxes[:, 1], boxes[:, 3], feat_h, stride).float()  # (N, Hf)
    cols = _cell_overlap(boxes[:, 0], boxes[:, 2], feat_w, stride).float()  # (N, Wf)

    def covered(select: torch.Tensor) -> torch.Tensor:
        # (Hf, N) @ (N, Wf): > 0 where some selected box overlaps the cell.
        return (rows[select].t() @ cols[select]) > 0

    positive_boxes = is_gt & (sizes >= lo) & (sizes <= hi)
    ignore_boxes = ~is_gt | (sizes < lo) | ((sizes > hi) & (sizes <= ignore_max))

    labels = torch.full((feat_h, feat_w), FOCUS_NEGATIVE, dtype=torch.long, device=device)
    labels[covered(ignore_boxes)] = FOCUS_IGNORE
    labels[covered(positive_boxes)] = FOCUS_POSITIVE
    starts_y = torch.arange(feat_h, device=device) * stride
    starts_x = torch.arange(feat_w, device=device) * stride
    labels[starts_y >= img_h, :] = FOCUS_IGNORE
    labels[:, starts_x >= img_w] = FOCUS_IGNORE
    return labels
