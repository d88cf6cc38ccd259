"""Utilities: pictures of detections, FocusChips and FocusPixel maps (:mod:`.visualization`), and
the one image-file reader (:mod:`.image_io`)."""
from .image_io import ImageReadError, read_image
from .visualization import SCALE_COLORS, add_colorbar, draw_chips, draw_detections, focus_heatmap

__all__ = ["ImageReadError", "read_image", "SCALE_COLORS", "add_colorbar", "draw_chips", "draw_detections", "focus_heatmap"]
