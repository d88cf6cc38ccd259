"""Tuning the FocusChip setting offline: store each view's detections once, re-stack any setting."""
from .restack import StoredImage, collect_image, crop_focus_map, restack_image, restack_views
from .tuner import (
    ChipSetting,
    collect_views,
    config_fragment,
    confirm_setting,
    evaluate_setting,
    pick_setting,
    setting_grid,
    tune_chip_settings,
)

__all__ = [
    "ChipSetting",
    "StoredImage",
    "collect_image",
    "collect_views",
    "config_fragment",
    "confirm_setting",
    "crop_focus_map",
    "evaluate_setting",
    "pick_setting",
    "restack_image",
    "restack_views",
    "setting_grid",
    "tune_chip_settings",
]
