"""
Pixel rendering of the synthetic detection dataset (:mod:`autofocus_d2.data.synthetic`): the
categories and their colours, a split's geometry (:class:`SplitSpec`), the textured background,
the object layout (small objects in clusters, a few medium/large ones scattered) and the drawing
of each object.

All sizes and boxes are in integer pixels of the image; boxes are XYWH. Every random draw comes
from the generator passed in, in a fixed order, so the same generator state gives the same image
and objects (the split writer relies on it: image ``i`` depends only on (seed, i)).
"""
import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_COLOURS",
    "SplitSpec",
    "draw_object",
    "render_image",
]

# A placement is rejected when it covers more than this share of the smaller of two boxes
# (stricter than IoU > 0.1: it also forbids a small box hidden inside a large one).
_MAX_OVERLAP = 0.1
_PLACEMENT_TRIES = 25

# (name, base RGB colour); category_id in the json is the index + 1.
_CATEGORY_TABLE: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("circle", (220, 40, 40)),
    ("square", (40, 80, 225)),
    ("triangle", (40, 185, 60)),
    ("cross", (235, 205, 30)),
    ("ring", (205, 45, 205)),
    ("diamond", (30, 205, 215)),
)
SYNTHETIC_CATEGORIES: Tuple[str, ...] = tuple(name for name, _ in _CATEGORY_TABLE)
# Base RGB colour of each category, in the order of SYNTHETIC_CATEGORIES; every drawn object gets
# its category's colour jittered by up to +-25 per channel.
SYNTHETIC_COLOURS: Tuple[Tuple[int, int, int], ...] = tuple(colour for _, colour in _CATEGORY_TABLE)


@dataclass(frozen=True)
class SplitSpec:
    """How one split is generated. Sizes are in pixels of the original image."""

    seed: int
    num_images: int
    side_range: Tuple[int, int]  # width and height are each drawn uniformly from this range
    clusters: Tuple[int, int]  # number of small-object clusters per image (inclusive range)
    cluster_radius: Tuple[int, int]  # radius of a cluster's disk
    small_per_cluster: Tuple[int, int]  # small objects attempted per cluster
    small_size: Tuple[float, float] = (8.0, 40.0)  # sqrt(area) of small objects, log-uniform
    large: Tuple[int, int] = (2, 5)  # medium/large objects attempted per image
    large_size: Tuple[float, float] = (48.0, 400.0)  # sqrt(area), log-uniform, capped below
    large_max_frac: float = 0.4  # cap on a large object's side, as a share of the short side


def _render_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour field from a random muted palette, plus mid-frequency shading and clutter."""
    palette = rng.uniform(50, 190, size=(3, 3))
    palette += rng.uniform(-40, 40, size=(3, 1))  # shared brightness shift per palette colour
    gh, gw = max(2, height // 250 + 2), max(2, width // 250 + 2)
    weights = rng.dirichlet(np.full(3, 0.6), size=(gh, gw))  # (gh, gw, 3) palette mixing
    grid = np.clip(weights @ palette, 0, 255).astype(np.uint8)
    img = Image.fromarray(grid, "RGB").resize((width, height), Image.BICUBIC)

    mh, mw = max(2, height // 40), max(2, width // 40)
    shade = rng.integers(0, 50, size=(mh, mw), dtype=np.uint8)
    shade_img = Image.fromarray(shade, "L").resize((width, height), Image.BILINEAR)
    img = ImageChops.add(img, Image.merge("RGB", [shade_img] * 3), offset=-25)

    # Unlabelled clutter: muted strokes and faint blobs, so that "anything with an edge" is not
    # an object.
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 16))):
        col = tuple(int(c) for c in rng.uniform(60, 200, size=3))
        x0, x1 = rng.uniform(0, width, size=2)
        y0, y1 = rng.uniform(0, height, size=2)
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=col, width=int(rng.integers(2, 7)))
        else:
            r = rng.uniform(20, 120)
            draw.ellipse([x0 - r, y0 - 0.6 * r, x0 + r, y0 + 0.6 * r], fill=col)
    return img


def draw_object(draw: ImageDraw.ImageDraw, category: int, box: Tuple[int, int, int, int],
                colour: Tuple[int, int, int]) -> None:
    """
    Draw one object as the dataset renders it.

    Args:
        draw: a PIL ``ImageDraw`` of the RGB canvas.
        category (int): 0-based index into :data:`SYNTHETIC_CATEGORIES` (the json's
            ``category_id`` - 1).
        box: XYWH integer box in canvas pixels; the shape fills pixels x0..x0+w-1, y0..y0+h-1
            (:func:`~autofocus_d2.data.synthetic_shapes.shape_polygons` gives its outline).
        colour: RGB fill (outline for "ring"), 0-255.
    """
    x0, y0, w, h = box
    x1, y1 = x0 + w - 1, y0 + h - 1
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    name = SYNTHETIC_CATEGORIES[category]
    if name == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=colour)
    elif name == "square":
        draw.rectangle([x0, y0, x1, y1], fill=colour)
    elif name == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=colour)
    elif name == "cross":
        tx, ty = max(2.0, w / 3.0), max(2.0, h / 3.0)
        draw.rectangle([x0, round(cy - ty / 2), x1, round(cy + ty / 2)], fill=colour)
        draw.rectangle([round(cx - tx / 2), y0, round(cx + tx / 2), y1], fill=colour)
    elif name == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=colour, width=max(2, round(min(w, h) / 5)))
    elif name == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    else:  # unreachable while _CATEGORY_TABLE and this function agree
        raise ValueError(f"No drawing rule for category {name!r}")


def _sample_wh(rng: np.random.Generator, lo: float, hi: float) -> Tuple[int, int]:
    """Width and height with log-uniform sqrt(area) in [lo, hi] and aspect ratio in [3/4, 4/3]."""
    side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    sqrt_ar = math.exp(rng.uniform(math.log(0.75), math.log(4.0 / 3.0)) / 2.0)
    return max(6, round(side * sqrt_ar)), max(6, round(side / sqrt_ar))


def _fits(boxes: List[Tuple[int, int, int, int]], box: Tuple[int, int, int, int]) -> bool:
    """Whether XYWH ``box`` overlaps no placed box by more than _MAX_OVERLAP of the smaller."""
    if not boxes:
        return True
    b = np.asarray(boxes, dtype=np.float64)
    x0, y0, w, h = box
    iw = np.minimum(b[:, 0] + b[:, 2], x0 + w) - np.maximum(b[:, 0], x0)
    ih = np.minimum(b[:, 1] + b[:, 3], y0 + h) - np.maximum(b[:, 1], y0)
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    smaller = np.minimum(b[:, 2] * b[:, 3], w * h)
    return bool(np.all(inter <= _MAX_OVERLAP * smaller))


def _layout(rng: np.random.Generator, spec: SplitSpec, width: int,
            height: int) -> List[Tuple[int, int, int, int]]:
    """XYWH boxes: small objects in 1-3 disks ("clusters"), then scattered large objects."""
    boxes: List[Tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(spec.clusters[0], spec.clusters[1] + 1))):
        radius = rng.uniform(*spec.cluster_radius)
        margin = min(radius, min(width, height) / 2.0 - 1)
        ccx, ccy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        for _ in range(int(rng.integers(spec.small_per_cluster[0], spec.small_per_cluster[1] + 1))):
            w, h = _sample_wh(rng, *spec.small_size)
            for _ in range(_PLACEMENT_TRIES):
                ang, rad = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.random())
                x0 = int(np.clip(round(ccx + rad * math.cos(ang) - w / 2), 0, width - w))
                y0 = int(np.clip(round(ccy + rad * math.sin(ang) - h / 2), 0, height - h))
                if _fits(boxes, (x0, y0, w, h)):
                    boxes.append((x0, y0, w, h))
                    break
    cap = min(spec.large_size[1], spec.large_max_frac * min(width, height))
    for _ in range(int(rng.integers(spec.large[0], spec.large[1] + 1))):
        w, h = _sample_wh(rng, spec.large_size[0], cap)
        for _ in range(_PLACEMENT_TRIES):
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if _fits(boxes, (x0, y0, w, h)):
                boxes.append((x0, y0, w, h))
                break
    return boxes


def render_image(
    rng: np.random.Generator, spec: SplitSpec
) -> Tuple[Image.Image, List[Tuple[int, Tuple[int, int, int, int]]]]:
    """
    Render one image of a split, as the split's generator does for each of its images.

    Args:
        rng: the image's generator (the split uses ``default_rng(SeedSequence([seed, index]))``);
            the same generator state gives the same image and objects.
        spec: the split's geometry (width and height drawn from ``spec.side_range``).

    Returns:
        The RGB PIL image and its objects as (0-based category index into
        :data:`SYNTHETIC_CATEGORIES`, XYWH integer box in image pixels), largest box first.
        Placed boxes overlap by at most a tenth of the smaller box.
    """
    width, height = (int(v) for v in rng.integers(spec.side_range[0], spec.side_range[1] + 1,
                                                   size=2))
    img = _render_background(rng, width, height)
    boxes = _layout(rng, spec, width, height)
    categories = rng.integers(0, len(_CATEGORY_TABLE), size=len(boxes))
    jitter = rng.integers(-25, 26, size=(len(boxes), 3))
    draw = ImageDraw.Draw(img)
    # Largest first so that the (allowed, slight) overlaps never hide a small object.
    order = sorted(range(len(boxes)), key=lambda i: -boxes[i][2] * boxes[i][3])
    objects = []
    for i in order:
        base = np.asarray(_CATEGORY_TABLE[categories[i]][1])
        colour = tuple(int(c) for c in np.clip(base + jitter[i], 0, 255))
        draw_object(draw, int(categories[i]), boxes[i], colour)
        objects.append((int(categories[i]), boxes[i]))
    # Fine sensor-like noise over everything, objects included.
    noise = Image.fromarray(rng.integers(0, 25, size=(height, width), dtype=np.uint8), "L")
    img = ImageChops.add(img, Image.merge("RGB", [noise] * 3), offset=-12)
    return img, objects
