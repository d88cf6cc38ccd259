"""Model-free analyses of AutoFocus settings on a dataset's ground truth."""
from .ground_truth import SIZE_CLASSES, GroundTruthImage, load_coco_ground_truth
from .oracle import (
    RECOVERABLE_DEFINITION,
    ChipSetting,
    analyze_oracle_chips,
    chip_settings,
    oracle_chip_policy,
    oracle_focus_map,
    oracle_views,
    perfect_detections,
    recoverable_per_scale,
    run_oracle_analysis,
)
from .report_text import format_holes, format_report_table
from .size_holes import in_size_holes, kept_size_intervals, objects_in_holes, size_holes

__all__ = [
    "RECOVERABLE_DEFINITION",
    "SIZE_CLASSES",
    "ChipSetting",
    "GroundTruthImage",
    "analyze_oracle_chips",
    "chip_settings",
    "format_holes",
    "format_report_table",
    "in_size_holes",
    "kept_size_intervals",
    "load_coco_ground_truth",
    "objects_in_holes",
    "oracle_chip_policy",
    "oracle_focus_map",
    "oracle_views",
    "perfect_detections",
    "recoverable_per_scale",
    "run_oracle_analysis",
    "size_holes",
]
