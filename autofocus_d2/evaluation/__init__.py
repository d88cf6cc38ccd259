"""Evaluation: COCO AP on any detectron2 install, paired bootstrap intervals of AP differences, and
AutoFocus's pixel saving."""
from .coco import build_coco_evaluator, coco_results, has_compiled_ops, load_coco_ground_truth
from .efficiency import AutoFocusEfficiencyEvaluator, summarize_efficiency
from .paired_bootstrap import PerImageMatches, bootstrap_counts, difference_interval, paired_ap_difference

__all__ = [
    "AutoFocusEfficiencyEvaluator",
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
