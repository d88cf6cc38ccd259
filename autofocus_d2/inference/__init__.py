"""AutoFocus inference: the scale chain, FocusChip generation and focus stacking."""
from .detector_interface import FocusDetector, require_focus_detector
from .focus_chips import generate_focus_chips, merge_overlapping_boxes
from .focus_stacking import (
    drop_border_cut,
    drop_small_covered,
    in_size_range,
    merge_detections,
    merge_indices,
    stacking_keep_mask,
)
from .scale_chain import ScaleChain, scale_zoom

__all__ = [
    "FocusDetector",
    "require_focus_detector",
    "ScaleChain",
    "scale_zoom",
    "generate_focus_chips",
    "merge_overlapping_boxes",
    "drop_border_cut",
    "drop_small_covered",
    "in_size_range",
    "merge_detections",
    "merge_indices",
    "stacking_keep_mask",
]
