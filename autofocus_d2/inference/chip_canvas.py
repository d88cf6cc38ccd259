"""Fixed-shape chip canvases: the chips of one scale packed side by side into canvases of a few
configured shapes, one detector pass per canvas.

FocusChips come in every shape, so batching them (``view_batching``) gives every detector pass a
new input shape: on a GPU that is what costs most (cuDNN autotuning per shape, no CUDA graphs, no
engine built for a fixed profile). Here every pass has one of the configured shapes
(``MODEL.AUTOFOCUS.CHIP_CANVASES``, (H, W) in pixels of the scale, i.e. network pixels).

Frames: a chip's *own frame* is the view it shows, (h, w) = ``View.out_hw`` pixels of its scale;
a *canvas frame* is the canvas's (H, W) pixels; a chip sits in its canvas at the integer offset
(x, y) of its :class:`Placement`, so canvas = own + (x, y).

The gap. Chips are placed at offsets that are multiples of ``align`` (the backbone's size
divisibility and the FocusPixel stride), so every chip's pixels meet the convolution and pooling
grids of every level exactly as in a pass of its own, and its FocusPixel cells are a slice of the
canvas's map. Between two chips lies a band of at least ``gap`` zero pixels (zero after
normalization: the pixel mean, which is what Detectron2 pads a batch with). In a pass of its own a
chip is followed by the same zero padding up to its size divisibility, then by the convolutions'
own zero padding; in the canvas by the zero band, then by a neighbour. So a chip's features can
depend on a neighbour only through receptive fields reaching across the whole band. The
theoretical receptive field of a ResNet-FPN spans the image, but what a detection depends on in
practice is its effective receptive field, which decays fast from its centre (Luo et al., NeurIPS
2016): the band makes every neighbour at least ``gap`` pixels away, farther than the largest
anchor's half side of the finest scale's chips and than two cells of the coarsest ROI level (p5,
stride 32: the ROIAlign bilinear samples reach one cell past a box). docs/speed.md gives the
measurement on the compact model (a chip's detections with and without a neighbour at each gap).

Mapping back: a canvas detection belongs to the chip whose half-gap cell holds its box centre; a
box that reaches beyond that cell (across the middle of a gap, into a neighbour's band) is dropped;
the others are clipped to their chip, as Detectron2 clips a pass's boxes to its image, and shifted
to the chip's own frame. The pipeline's chip-border rule runs afterwards as for any chip.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes, ImageList, Instances

__all__ = ["Placement", "CanvasPlan", "pack_chips", "compose_canvas", "chip_instances", "chip_focus_map",
           "canvas_proposal_budget", "check_canvas_shapes", "canvas_alignment", "canvas_batch"]

HW = Tuple[int, int]


@dataclass(frozen=True)
class Placement:
    """Chip placed in canvas ``canvas`` with its top-left pixel at (``x``, ``y``) of the canvas."""

    canvas: int
    x: int
    y: int


@dataclass(frozen=True)
class CanvasPlan:
    """``shapes``: (H, W) of each canvas (each one of the configured shapes); ``placements``: per
    chip its :class:`Placement`, or None for a chip larger than every canvas (it keeps the plain
    batched path); ``members``: per canvas, the indices of its chips."""

    shapes: List[HW]
    placements: List[Optional[Placement]]
    members: List[List[int]]

    @property
    def unplaced(self) -> List[int]:
        return [i for i, p in enumerate(self.placements) if p is None]


def canvas_alignment(size_divisibility: int, focus_stride: int) -> int:
    """The multiple chips are placed at: the least common multiple of the backbone's size
    divisibility (0/1: none) and the FocusPixel stride."""
    d, s = max(1, int(size_divisibility)), max(1, int(focus_stride))
    return d * s // math.gcd(d, s)


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def check_canvas_shapes(shapes: Sequence[Sequence[int]], align: int, key: str = "MODEL.AUTOFOCUS.CHIP_CANVASES") -> List[HW]:
    """Configured canvas shapes as (H, W) tuples sorted by area; raises ValueError naming ``key``
    for a shape that is not two positive multiples of ``align``."""
    out = []
    for s in shapes:
        if len(s) != 2 or any(int(v) != v or v <= 0 or v % align for v in s):
            raise ValueError(f"{key}: every canvas must be [H, W], positive multiples of {align}; got {list(s)}")
        out.append((int(s[0]), int(s[1])))
    return sorted(set(out), key=lambda hw: (hw[0] * hw[1], hw))


def _shelf_pack(order: Sequence[int], hws: Sequence[HW], shape: HW, gap: int, align: int) -> List[List[Tuple[int, int, int]]]:
    """First-fit shelf packing of chips ``order`` (tallest first) into canvases of ``shape``.

    A chip at (x, y) reserves [x, x + max(w + gap, pw)) x [y, y + max(h + gap, ph)) (pw, ph: its
    size rounded up to ``align``), rounded up to ``align``; reservations never overlap, and the
    chip's padded extent stays inside the canvas. Returns per canvas a list of (chip, x, y)."""
    H, W = shape
    canvases: List[List[Tuple[int, int, int]]] = []
    shelves: List[List[List[int]]] = []  # per canvas, per shelf: [y, height, next x, next shelf y]
    for i in order:
        h, w = hws[i]
        ph, pw = _round_up(h, align), _round_up(w, align)
        step_x, step_y = max(w + gap, pw), max(h + gap, ph)
        spot = None
        for c in range(len(canvases)):
            for shelf in shelves[c]:
                y, height, x, _ = shelf
                if h <= height and x + pw <= W:  # tallest first: the shelf's first chip is its tallest
                    spot = (c, x, y)
                    shelf[2] = _round_up(x + step_x, align)
                    break
            if spot is None:
                y = shelves[c][-1][3]
                if y + ph <= H:
                    spot = (c, 0, y)
                    shelves[c].append([y, h, _round_up(step_x, align), _round_up(y + step_y, align)])
            if spot is not None:
                break
        if spot is None:
            canvases.append([])
            shelves.append([[0, h, _round_up(step_x, align), _round_up(step_y, align)]])
            spot = (len(canvases) - 1, 0, 0)
        canvases[spot[0]].append((i, spot[1], spot[2]))
    return canvases


def pack_chips(hws: Sequence[HW], shapes: Sequence[HW], *, gap: int, align: int) -> CanvasPlan:
    """
    Pack chips of (h, w) pixels (their scale's, the detector's input size) into canvases.

    Args:
        hws: (h, w) of each chip.
        shapes: the allowed canvas shapes (H, W), multiples of ``align`` (:func:`check_canvas_shapes`).
        gap: zero pixels at least between two chips' pixels (and between a chip and the next
            chip's padded extent), in pixels of the scale.
        align: chips sit at multiples of this (the backbone's size divisibility, a multiple of the
            FocusPixel stride); a chip's extent rounded up to it must fit in its canvas.

    Returns:
        a :class:`CanvasPlan`. A chip whose ``align``-rounded size exceeds every shape is left
        unplaced. Chips are shelf-packed, tallest first, into canvases of the largest shape; then
        each canvas takes the smallest configured shape that its chips fit in when packed alone.
        Deterministic (ties by index).
    """
    if gap < 0 or int(gap) != gap:
        raise ValueError(f"the canvas gap must be an integer >= 0 pixels, got {gap}")
    if align < 1:
        raise ValueError(f"align must be >= 1, got {align}")
    shapes = sorted(shapes, key=lambda hw: (hw[0] * hw[1], hw))
    if not shapes:
        raise ValueError("pack_chips needs at least one canvas shape")
    for i, (h, w) in enumerate(hws):
        if h <= 0 or w <= 0:
            raise ValueError(f"chip {i} has an empty size {(h, w)}")

    def fits(i: int, shape: HW) -> bool:
        return _round_up(hws[i][0], align) <= shape[0] and _round_up(hws[i][1], align) <= shape[1]

    placements: List[Optional[Placement]] = [None] * len(hws)
    plan_shapes: List[HW] = []
    members: List[List[int]] = []
    # Every chip goes to the largest shape that holds it (by area; shapes need not nest).
    by_shape = {s: [] for s in shapes}
    for i in range(len(hws)):
        holding = [s for s in shapes if fits(i, s)]
        if holding:
            by_shape[holding[-1]].append(i)
    for shape in reversed(shapes):
        order = sorted(by_shape[shape], key=lambda i: (-hws[i][0], -hws[i][1], i))
        for canvas in _shelf_pack(order, hws, shape, gap, align):
            chips = [i for i, _, _ in canvas]
            # The smallest shape that holds all of this canvas's chips when they are packed alone.
            final, layout = shape, canvas
            for small in shapes:
                if small == shape or small[0] * small[1] >= shape[0] * shape[1]:
                    break
                if all(fits(i, small) for i in chips):
                    repacked = _shelf_pack(sorted(chips, key=lambda i: (-hws[i][0], -hws[i][1], i)),
                                           hws, small, gap, align)
                    if len(repacked) == 1:
                        final, layout = small, repacked[0]
                        break
            c = len(plan_shapes)
            plan_shapes.append(final)
            members.append(sorted(chips))
            for i, x, y in layout:
                placements[i] = Placement(c, x, y)
    return CanvasPlan(plan_shapes, placements, members)


def compose_canvas(chips: Sequence[torch.Tensor], offsets: Sequence[Tuple[int, int]], shape: HW) -> torch.Tensor:
    """Normalized chips (C, h, w) pasted at their (x, y) offsets into a zero canvas (C, H, W)
    (zero: the normalized pixel mean, as Detectron2 pads)."""
    canvas = chips[0].new_zeros((chips[0].shape[0], *shape))
    for chip, (x, y) in zip(chips, offsets):
        h, w = chip.shape[-2:]
        canvas[:, y : y + h, x : x + w] = chip
    return canvas


def chip_instances(
    instances: Instances, chips: Sequence[int], plan: CanvasPlan, hws: Sequence[HW], gap: int
) -> List[Instances]:
    """
    Split one canvas's detections among its chips.

    Args:
        instances: detections of the canvas pass, boxes (R, 4) XYXY in the canvas frame.
        chips: the chip indices of this canvas (``plan.members[c]``).
        plan, hws: the packing plan and every chip's (h, w).
        gap: the packing gap (pixels).

    Returns:
        per chip of ``chips``, Instances of image size (h, w) with boxes in the chip's own frame:
        those whose centre lies in the chip's cell (its pixels widened by ``gap / 2`` on every side),
        minus those reaching beyond the cell, clipped to the chip. Every other field is kept as is
        (``pred_keypoints`` x, y shifted with the boxes).
    """
    boxes = instances.pred_boxes.tensor
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = gap / 2.0
    out = []
    for i in chips:
        p = plan.placements[i]
        h, w = hws[i]
        x0, y0, x1, y1 = p.x - half, p.y - half, p.x + w + half, p.y + h + half
        inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
        within = (boxes[:, 0] >= x0) & (boxes[:, 1] >= y0) & (boxes[:, 2] <= x1) & (boxes[:, 3] <= y1)
        mine = instances[inside & within]
        result = Instances((h, w))
        for name, value in mine.get_fields().items():
            if name == "pred_boxes":
                shifted = Boxes(value.tensor - value.tensor.new_tensor([p.x, p.y, p.x, p.y]))
                shifted.clip((h, w))
                value = shifted
            elif name == "pred_keypoints":
                value = torch.cat([value[..., :2] - value.new_tensor([p.x, p.y]), value[..., 2:]], dim=-1)
            result.set(name, value)
        out.append(result)
    return out


def chip_focus_map(focus: torch.Tensor, placement: Placement, hw: HW, stride: int, size_divisibility: int) -> torch.Tensor:
    """The FocusPixel map (h', w') of one chip from its canvas's map ``focus`` (Hf, Wf) of stride
    ``stride``: the cells of the chip's extent rounded up to ``size_divisibility``, the grid a pass
    of its own returns (the placement is a multiple of ``stride``)."""
    d = max(1, int(size_divisibility))
    ph, pw = _round_up(hw[0], d), _round_up(hw[1], d)
    r0, c0 = placement.y // stride, placement.x // stride
    return focus[r0 : r0 + math.ceil(ph / stride), c0 : c0 + math.ceil(pw / stride)]


def canvas_proposal_budget(chip_pixels: Sequence[int], per_mpix: float, minimum: int) -> Optional[int]:
    """RPN proposals for one canvas pass: the sum of what each chip would get in a pass of its own
    (``max(minimum, ceil(per_mpix * its Mpix))``), from the chips' areas, not the canvas's (the
    empty band and corners propose nothing worth paying for). None when ``per_mpix`` is 0 (off)."""
    if per_mpix <= 0:
        return None
    return int(sum(max(minimum, math.ceil(per_mpix * p / 1e6)) for p in chip_pixels))


def canvas_batch(canvas: torch.Tensor, view_pixels: int) -> ImageList:
    """One canvas (C, H, W) as a detector batch of one image of its full size. The batch carries
    ``view_pixels``, the pixels of the chips it holds: what the pass processes for the pipeline's
    pixel counts (the benchmark's pass timing attributes passes to scales by it)."""
    batch = ImageList(canvas[None], [tuple(canvas.shape[-2:])])
    batch.view_pixels = int(view_pixels)
    return batch
