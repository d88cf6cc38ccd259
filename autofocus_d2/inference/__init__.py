"""AutoFocus inference: FocusChip generation, the chip policies, focus stacking and the pipeline
(the scale chain, views and size ranges are in :mod:`autofocus_d2.structures`)."""
from .detector_interface import FocusDetector, require_focus_detector
from .pipeline import CoarseToFinePipeline  # registers it in AUTOFOCUS_PIPELINE_REGISTRY
from .focus_chips import generate_focus_chips, merge_overlapping_boxes
from .focus_stacking import (
    drop_border_cut,
    drop_small_covered,
    merge_detections,
    merge_indices,
    stacking_keep_mask,
)
from .view_runner import ViewRunSettings, run_views

__all__ = [
    "CoarseToFinePipeline",
    "FocusDetector",
    "require_focus_detector",
    "generate_focus_chips",
    "merge_overlapping_boxes",
    "drop_border_cut",
    "drop_small_covered",
    "merge_detections",
    "merge_indices",
    "stacking_keep_mask",
    "ViewRunSettings",
    "run_views",
]
