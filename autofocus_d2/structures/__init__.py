"""The bottom layer: plain geometry and rules that modeling, inference, data and analysis share.

The scale chain and its zooms, views and their frames, crop / resize and tiling, size ranges,
FocusPixel labels and the per-image stats record. It imports only torch, Detectron2's structures
and config helpers, and :mod:`autofocus_d2.config_checks`; nothing of the packages above it
(tests/test_import_direction.py checks this).
"""
from .focus_labels import (
    FOCUS_IGNORE,
    FOCUS_NEGATIVE,
    FOCUS_POSITIVE,
    SMALL_MIN_FRAMES,
    focus_pixel_targets,
    focus_size_range,
)
from .image_stats import ImageStats
from .scale_chain import ScaleChain, scale_zoom
from .size_ranges import box_sizes, check_size_range, in_size_range
from .views import (
    FRAME_FREE_FIELDS,
    View,
    area_downscale,
    crop_and_resize,
    instances_to_original,
    snap_to_pixels,
    tile_box,
    tile_intervals,
    tile_views,
    zoomed_hw,
)

__all__ = [
    "FOCUS_IGNORE",
    "FOCUS_NEGATIVE",
    "FOCUS_POSITIVE",
    "SMALL_MIN_FRAMES",
    "focus_pixel_targets",
    "focus_size_range",
    "ImageStats",
    "ScaleChain",
    "scale_zoom",
    "box_sizes",
    "check_size_range",
    "in_size_range",
    "FRAME_FREE_FIELDS",
    "View",
    "area_downscale",
    "crop_and_resize",
    "instances_to_original",
    "snap_to_pixels",
    "tile_box",
    "tile_intervals",
    "tile_views",
    "zoomed_hw",
]
