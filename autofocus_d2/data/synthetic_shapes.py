"""
Exact outlines of the synthetic dataset's shapes, as COCO "segmentation" polygons.

Frame: continuous original-image coordinates, pixel (i, j) covering [i, i + 1) x [j, j + 1), so a
shape drawn by :func:`autofocus_d2.data.synthetic_render.draw_object` over the XYWH integer box
``(x0, y0, w, h)`` (pixels ``x0 .. x0 + w - 1``) spans ``[x0, x0 + w] x [y0, y0 + h]`` here and
its polygon's bounding box is the annotated bbox. Each outline follows the drawing rule of its
category; ellipses are sampled at :data:`ELLIPSE_VERTICES` points. A polygon is a flat list
``[x0, y0, x1, y1, ...]`` rounded to 1/100 pixel.
"""
import math
from typing import List, Sequence, Tuple

__all__ = ["ELLIPSE_VERTICES", "shape_polygons"]

# Vertices of an ellipse outline (the rasterized ellipse differs from it by under half a pixel
# along the edge for the dataset's sizes, up to 400 px).
ELLIPSE_VERTICES = 48

Point = Tuple[float, float]


def _flat(points: Sequence[Point]) -> List[float]:
    return [round(float(v), 2) for p in points for v in p]


def _ellipse(cx: float, cy: float, rx: float, ry: float, reverse: bool = False) -> List[Point]:
    """Closed-outline points of an ellipse, starting at angle 0 (rightmost point)."""
    angles = [2 * math.pi * i / ELLIPSE_VERTICES for i in range(ELLIPSE_VERTICES)]
    if reverse:
        angles = [-a for a in angles]
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _ring(cx: float, cy: float, rx: float, ry: float, thickness: float) -> List[Point]:
    """An annulus as one "keyhole" polygon: the outer ellipse, a zero-width cut at angle 0 to the
    inner ellipse, the inner ellipse the other way round, and back. COCO's rasterizer (even-odd)
    leaves the hole empty; the two cut edges coincide and cancel."""
    irx, iry = rx - thickness, ry - thickness
    if irx <= 0 or iry <= 0:
        return _ellipse(cx, cy, rx, ry)
    outer = _ellipse(cx, cy, rx, ry) + [(cx + rx, cy)]
    inner = _ellipse(cx, cy, irx, iry, reverse=True) + [(cx + irx, cy)]
    return outer + inner


def shape_polygons(name: str, box: Sequence[int]) -> List[List[float]]:
    """
    The COCO polygons of one synthetic shape.

    Args:
        name: a category of ``SYNTHETIC_CATEGORIES`` ("circle", "square", "triangle", "cross",
            "ring", "diamond").
        box: XYWH integer box in original-image pixels, as annotated.

    Returns:
        list of polygons (one here), each a flat [x, y, ...] list in the continuous
        original-image frame, inside ``[x0, x0 + w] x [y0, y0 + h]``.
    """
    x0, y0, w, h = (int(v) for v in box)
    if w < 1 or h < 1:
        raise ValueError(f"box {list(box)} is empty (XYWH with w, h >= 1 expected)")
    xe, ye = x0 + w, y0 + h
    cx, cy = x0 + w / 2.0, y0 + h / 2.0
    if name == "circle":
        points = _ellipse(cx, cy, w / 2.0, h / 2.0)
    elif name == "square":
        points = [(x0, y0), (xe, y0), (xe, ye), (x0, ye)]
    elif name == "triangle":
        points = [(x0, ye), (xe, ye), (cx, y0)]
    elif name == "cross":
        # The two bars as drawn: rows round(cy' -+ ty/2) and columns round(cx' -+ tx/2), inclusive,
        # with cx', cy' the centre in pixel indices.
        tx, ty = max(2.0, w / 3.0), max(2.0, h / 3.0)
        pcx, pcy = (2 * x0 + w - 1) / 2.0, (2 * y0 + h - 1) / 2.0
        hy0, hy1 = round(pcy - ty / 2), round(pcy + ty / 2) + 1
        vx0, vx1 = round(pcx - tx / 2), round(pcx + tx / 2) + 1
        points = [
            (vx0, y0), (vx1, y0), (vx1, hy0), (xe, hy0), (xe, hy1), (vx1, hy1),
            (vx1, ye), (vx0, ye), (vx0, hy1), (x0, hy1), (x0, hy0), (vx0, hy0),
        ]
    elif name == "ring":
        points = _ring(cx, cy, w / 2.0, h / 2.0, max(2, round(min(w, h) / 5)))
    elif name == "diamond":
        points = [(cx, y0), (xe, cy), (cx, ye), (x0, cy)]
    else:
        raise ValueError(f"No outline rule for synthetic category {name!r}")
    return [_flat(points)]
