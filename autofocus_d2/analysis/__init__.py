"""Model-free analyses of AutoFocus settings on a dataset's ground truth."""
from .ground_truth import SIZE_CLASSES, GroundTruthImage, load_coco_ground_truth
from .oracle import (
    RECOVERABLE_DEFINITION,
    ChipSetting,
    analyze_oracle_chips,
    chip_settings,
    format_report_table,
    oracle_focus_map,
    oracle_views,
    run_oracle_analysis,
)

__all__ = [
    "RECOVERABLE_DEFINITION",
    "SIZE_CLASSES",
    "ChipSetting",
    "GroundTruthImage",
    "analyze_oracle_chips",
    "chip_settings",
    "format_report_table",
    "load_coco_ground_truth",
    "oracle_focus_map",
    "oracle_views",
    "run_oracle_analysis",
]
