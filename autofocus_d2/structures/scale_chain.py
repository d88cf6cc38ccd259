"""The scale chain: the resolution at which each scale sees an image.

As in the paper (and SNIPER's code), a scale is a target resolution of the WHOLE image, a pair
``(short, cap)``: the image is resized so that its shorter side is ``short`` pixels and its longer
side at most ``cap`` pixels. Each image therefore gets its own zoom per scale. A side of ``-1`` sets
no constraint: ``(-1, 512)`` resizes the longer side to 512, ``(-1, -1)`` keeps the original
resolution (zoom 1).

One object owns this rule and everything that needs a zoom asks it: the inference pipeline, the
oracle chip analysis, the SAHI baseline's slice size, the benchmark and SNIPER chip training.
"""
import math
from typing import List, Sequence, Tuple

from detectron2.config import configurable

from ..config_checks import check_scale_chain
from .views import zoomed_hw

__all__ = ["ScaleChain", "scale_zoom", "skipped_from_zooms"]


def _round_half_up(x: float) -> int:
    """Nearest integer, halves up (the rounding of :func:`zoomed_hw`)."""
    return int(math.floor(x + 0.5))


def scale_zoom(image_hw: Tuple[int, int], short: float, cap: float) -> float:
    """
    Zoom (pixels of the scale per original pixel) of an image of ``image_hw`` = (H, W) original
    pixels at the scale ``(short, cap)``: ``short / min(H, W)``, lowered to ``cap / max(H, W)`` when
    the longer side would exceed ``cap`` (SNIPER's rule: the rounded longer side is compared, so
    the resized longer side never exceeds ``cap``); ``short = -1``: ``cap / max(H, W)``; both
    ``-1``: 1.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {tuple(image_hw)}")
    for name, value in (("short", short), ("cap", cap)):
        if not (value == -1 or (value > 0 and math.isfinite(value))):
            raise ValueError(f"{name} must be -1 (no constraint) or a positive number, got {value}")
    if short > 0:
        zoom = short / min(h, w)
        if cap > 0 and _round_half_up(zoom * max(h, w)) > cap:
            zoom = cap / max(h, w)
        return zoom
    if cap > 0:
        return cap / max(h, w)
    return 1.0


def skipped_from_zooms(zooms: Sequence[float]) -> List[int]:
    """The scales k >= 1 whose zoom is not above the zoom of the last scale before them that is not
    skipped (:meth:`ScaleChain.skipped_scales` of an image whose zooms, scale 0 first, are ``zooms``)."""
    skipped, last = [], zooms[0]
    for k in range(1, len(zooms)):
        if zooms[k] <= last * (1 + 1e-9):
            skipped.append(k)
        else:
            last = zooms[k]
    return skipped


class ScaleChain:
    """
    The scales of AutoFocus, coarse to fine: ``ScaleChain(cfg)`` reads ``MODEL.AUTOFOCUS.SCALES``
    (or ``ScaleChain(scales=[(480, 512), (800, 1280), (1400, 2000)])``).

    Scale 0 runs on the whole image; scale k >= 1 only inside the FocusChips of scale k-1. The zoom
    of a scale is relative to the original image.
    """

    @configurable
    def __init__(self, *, scales: Sequence[Sequence[float]]):
        """scales: one ``(short, cap)`` pair per scale, in pixels, ``-1`` = no constraint."""
        check_scale_chain(scales, "scales")
        self.scales: List[Tuple[float, float]] = [(float(s), float(c)) for s, c in scales]

    @classmethod
    def from_config(cls, cfg):
        check_scale_chain(cfg.MODEL.AUTOFOCUS.SCALES, "MODEL.AUTOFOCUS.SCALES")
        return {"scales": cfg.MODEL.AUTOFOCUS.SCALES}

    def __len__(self) -> int:
        return len(self.scales)

    def __repr__(self) -> str:
        return f"ScaleChain(scales={self.scales})"

    def zooms(self, image_hw: Tuple[int, int]) -> List[float]:
        """Zoom of every scale for an original image of ``image_hw`` = (H, W) pixels, scale 0
        first (pixels of the scale per original pixel)."""
        return [scale_zoom(image_hw, s, c) for s, c in self.scales]

    def zoom(self, image_hw: Tuple[int, int], scale: int) -> float:
        """Zoom of one scale (see :meth:`zooms`)."""
        return scale_zoom(image_hw, *self.scales[scale])

    def skipped_scales(self, image_hw: Tuple[int, int]) -> List[int]:
        """The scales k >= 1 that are no finer than the last scale before them that is not
        skipped, for an image of ``image_hw`` = (H, W) pixels (zoom not above that scale's zoom):
        e.g. scale 1 (-1, -1) after scale 0 (512, 768) on a 480 x 640 image (zooms 1.067, 1).
        The chain's check (:func:`check_scale_chain`) rejects chains where this holds for every
        image; the pipeline processes no chip at these scales for such images."""
        return skipped_from_zooms(self.zooms(image_hw))

    def image_hw(self, image_hw: Tuple[int, int], scale: int) -> Tuple[int, int]:
        """Size (h, w) in pixels of the whole image at ``scale``."""
        h, w = image_hw
        return zoomed_hw((0, 0, w, h), self.zoom(image_hw, scale))
