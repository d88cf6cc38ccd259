"""Utilities: pictures of detections, FocusChips and FocusPixel maps (:mod:`.visualization`)."""
from .visualization import SCALE_COLORS, draw_chips, draw_detections, focus_heatmap

__all__ = ["SCALE_COLORS", "draw_chips", "draw_detections", "focus_heatmap"]
