"""Views: the regions of an original image that the detector sees, and how they are made.

A :class:`View` is a box of the ORIGINAL image (integer pixels) resized to ``out_hw`` pixels of
one scale. Scale 0 views are whole images; finer views are chips (or tiles). Everything here is
device-agnostic tensor code.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances

__all__ = [
    "View",
    "zoomed_hw",
    "tile_intervals",
    "tile_box",
    "tile_views",
    "snap_to_pixels",
    "crop_and_resize",
    "area_downscale",
    "FRAME_FREE_FIELDS",
    "instances_to_original",
]

# Per-instance fields that do not depend on the frame: values, or maps relative to the instance's
# own box (Detectron2's mask head: (N, 1, M, M) probabilities; keypoint head: (N, K, R, R)
# heatmaps), which stay valid when the box is mapped.
FRAME_FREE_FIELDS = ("scores", "pred_classes", "pred_masks", "pred_keypoint_heatmaps")

Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class View:
    """Region ``box`` (x0, y0, x1, y1; integer pixels of original image ``image_index``) seen by
    the detector at ``scale`` as an image of ``out_hw`` = (h, w) pixels."""

    image_index: int
    scale: int
    box: Box
    out_hw: Tuple[int, int]

    @property
    def factors(self) -> Tuple[float, float]:
        """(sx, sy): view pixels per original pixel along x and y."""
        x0, y0, x1, y1 = self.box
        return self.out_hw[1] / (x1 - x0), self.out_hw[0] / (y1 - y0)

    @property
    def zoom(self) -> float:
        """Mean of the two factors (they differ only by rounding)."""
        sx, sy = self.factors
        return 0.5 * (sx + sy)

    @property
    def pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    def to_original(self, boxes: torch.Tensor) -> torch.Tensor:
        """(R, 4) XYXY boxes in the view's frame -> (R, 4) in the original image frame."""
        sx, sy = self.factors
        scale = boxes.new_tensor([sx, sy, sx, sy])
        offset = boxes.new_tensor([self.box[0], self.box[1], self.box[0], self.box[1]])
        return boxes / scale + offset

    def points_to_original(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 2) xy points in the view's frame -> (..., 2) in the original image frame."""
        sx, sy = self.factors
        return points / points.new_tensor([sx, sy]) + points.new_tensor([self.box[0], self.box[1]])

    def box_tensor(self, device=None) -> torch.Tensor:
        return torch.tensor(self.box, dtype=torch.float32, device=device)

    def covers_image(self, image_hw: Tuple[int, int]) -> bool:
        return self.box == (0, 0, image_hw[1], image_hw[0])


def zoomed_hw(box: Sequence[int], zoom: float) -> Tuple[int, int]:
    """Size in pixels of original-frame ``box`` zoomed by ``zoom``."""
    x0, y0, x1, y1 = box
    return max(1, int((y1 - y0) * zoom + 0.5)), max(1, int((x1 - x0) * zoom + 0.5))


def tile_intervals(length: int, tile: int, overlap: int) -> List[Tuple[int, int]]:
    """Integer intervals of at most ``tile`` covering [0, length), neighbours overlapping by at
    least ``overlap`` (evenly spread; a single interval when ``length <= tile``)."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (n - 1)
    return [(int(round(i * step)), int(round(i * step)) + tile) for i in range(n)]


def tile_box(box: Sequence[int], tile: int, overlap: int) -> List[Box]:
    """Split original-frame ``box`` into overlapping tiles of at most ``tile`` x ``tile``
    original pixels (overlap in original pixels)."""
    x0, y0, x1, y1 = box
    xs = tile_intervals(x1 - x0, tile, overlap)
    ys = tile_intervals(y1 - y0, tile, overlap)
    return [(x0 + a, y0 + c, x0 + b, y0 + d) for (c, d) in ys for (a, b) in xs]


def tile_views(
    image_index: int, scale: int, box: Sequence[int], zoom: float, max_side: int, overlap: int
) -> List[View]:
    """The views of original-frame integer ``box`` at ``scale`` / ``zoom``: the box itself when its
    zoomed size is at most ``max_side`` pixels a side, else overlapping tiles of at most
    ``max_side`` pixels of the scale (tile side ``int(max_side / zoom)`` original pixels), neighbours
    overlapping by about ``overlap`` pixels of the scale (:func:`tile_box`). The pipeline's tiling of
    chips and whole images, and SNIPER negative mining's."""
    box = tuple(int(v) for v in box)
    out_hw = zoomed_hw(box, zoom)
    if max(out_hw) <= max_side:
        return [View(image_index, scale, box, out_hw)]
    tile = int(max_side / zoom)
    tile_overlap = int(round(overlap / zoom))
    return [View(image_index, scale, sub, zoomed_hw(sub, zoom)) for sub in tile_box(box, tile, tile_overlap)]


def snap_to_pixels(boxes: torch.Tensor, image_hw: Tuple[int, int]) -> torch.Tensor:
    """(N, 4) float XYXY boxes -> the enclosing integer-pixel boxes, clipped to the image and at
    least one pixel wide (float tensor holding integers)."""
    h, w = image_hw
    x0 = boxes[:, 0].floor().clamp(0, w - 1)
    y0 = boxes[:, 1].floor().clamp(0, h - 1)
    x1 = torch.maximum(boxes[:, 2].ceil().clamp(max=w), x0 + 1)
    y1 = torch.maximum(boxes[:, 3].ceil().clamp(max=h), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def crop_and_resize(image: torch.Tensor, box: Sequence[int], out_hw: Tuple[int, int]) -> torch.Tensor:
    """Crop original-frame ``box`` from ``image`` (C, H, W; uint8 or float) and resize it to
    ``out_hw`` with bilinear interpolation (antialiased when shrinking), on the image's device.
    Returns float32: a uint8 image is converted crop by crop, so a large frame is never held in
    float32 as a whole."""
    x0, y0, x1, y1 = box
    crop = image[:, y0:y1, x0:x1].float()
    if tuple(crop.shape[-2:]) == tuple(out_hw):
        return crop
    shrinking = out_hw[0] < crop.shape[-2] or out_hw[1] < crop.shape[-1]
    return F.interpolate(
        crop[None], size=tuple(out_hw), mode="bilinear", align_corners=False, antialias=shrinking
    )[0]


def area_downscale(image: torch.Tensor, box: Sequence[int], out_hw: Tuple[int, int], min_factor: int = 2) -> torch.Tensor:
    """Crop original-frame ``box`` from ``image`` (C, H, W) and shrink it to ``out_hw`` without a
    full-resolution antialiased resize: an integer-factor area reduction (mean of k x k pixels, k
    the integer part of the smaller shrink factor; a uint8 image is averaged in float), then a
    bilinear step of the remaining factor (1 to 2, no antialiasing needed) that samples every
    output pixel centre exactly where :func:`crop_and_resize` does. Where the shrink factor is
    below ``min_factor`` it is :func:`crop_and_resize` itself. Returns float (C, h, w), on the
    image's device. tests/structures/test_views.py states the tolerance against crop_and_resize."""
    x0, y0, x1, y1 = box
    crop = image[:, y0:y1, x0:x1]
    ch, cw = crop.shape[-2:]
    fy, fx = ch / out_hw[0], cw / out_hw[1]
    k = int(min(fy, fx))
    if k < min_factor:
        return crop_and_resize(image, box, out_hw).float()
    # ceil_mode: a last partial window averages the pixels it has (PyTorch divides by those).
    pooled = F.avg_pool2d(crop[None].float(), k, ceil_mode=True)
    hp, wp = pooled.shape[-2:]
    # Output pixel centre j lies at (j + 0.5) * f original pixels = (j + 0.5) * f / k pooled ones;
    # grid_sample (align_corners False) reads position p of a length-n axis at 2 p / n - 1.
    ys = (torch.arange(out_hw[0], device=crop.device, dtype=torch.float32) + 0.5) * (fy / k) * (2.0 / hp) - 1
    xs = (torch.arange(out_hw[1], device=crop.device, dtype=torch.float32) + 0.5) * (fx / k) * (2.0 / wp) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    return F.grid_sample(pooled, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def instances_to_original(instances: Instances, view: View, image_hw: Tuple[int, int]) -> Instances:
    """
    Map one view's detections to the original image frame.

    ``pred_boxes`` (R, 4) and the x, y of ``pred_keypoints`` (R, K, 3: x, y, score) are mapped
    with :meth:`View.to_original` / :meth:`View.points_to_original`; the
    :data:`FRAME_FREE_FIELDS` are kept as they are. ``pred_masks`` must be box-relative
    (R, 1, M, M), as Detectron2's mask head gives them before ``detector_postprocess`` pastes them.

    Args:
        instances: detections of ``view``, in the view's frame.
        view: the view they come from.
        image_hw: (H, W) of the original image, the ``image_size`` of the result.

    Returns:
        Instances of ``image_size`` ``image_hw`` with the same fields, in the original frame.

    Raises:
        ValueError: for a field this function does not know how to map (naming it), or
            ``pred_masks`` that are not box-relative.
    """
    out = Instances(tuple(image_hw))
    for name, value in instances.get_fields().items():
        if name == "pred_boxes":
            out.pred_boxes = Boxes(view.to_original(value.tensor))
        elif name == "pred_keypoints":
            if value.dim() != 3 or value.shape[-1] != 3:
                raise ValueError(f"pred_keypoints must be (R, K, 3) x, y, score; got {tuple(value.shape)}")
            out.pred_keypoints = torch.cat([view.points_to_original(value[..., :2]), value[..., 2:]], dim=-1)
        elif name in FRAME_FREE_FIELDS:
            if name == "pred_masks" and not (
                isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[1] == 1
            ):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"pred_masks must be box-relative (R, 1, M, M) probabilities (Detectron2's mask "
                    f"head output), got {shape}; image-frame masks cannot cross views"
                )
            out.set(name, value)
        else:
            raise ValueError(
                f"the AutoFocus pipeline cannot map the per-instance field {name!r} of a view to the "
                f"original image (known: pred_boxes, pred_keypoints, {', '.join(FRAME_FREE_FIELDS)})"
            )
    return out
