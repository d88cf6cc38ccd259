"""Evaluation: COCO AP on any detectron2 install, paired bootstrap intervals of AP differences, and
AutoFocus's pixel saving."""
from .detection_cap import (
    DetectionCapCounter,
    DetectionCapEvaluator,
    dense_scene_hint,
    detection_cap,
    evaluation_max_dets,
    final_detection_cap,
    score_floor,
)
from .coco import build_coco_evaluator, coco_results, has_compiled_ops, load_coco_ground_truth
from .efficiency import AutoFocusEfficiencyEvaluator, summarize_efficiency
from .paired_bootstrap import PerImageMatches, bootstrap_counts, difference_interval, paired_ap_difference

__all__ = [
    "AutoFocusEfficiencyEvaluator",
    "DetectionCapCounter",
    "DetectionCapEvaluator",
    "dense_scene_hint",
    "detection_cap",
    "evaluation_max_dets",
    "final_detection_cap",
    "score_floor",
    "PerImageMatches",
    "bootstrap_counts",
    "build_coco_evaluator",
    "coco_results",
    "difference_interval",
    "has_compiled_ops",
    "load_coco_ground_truth",
    "paired_ap_difference",
    "summarize_efficiency",
]
