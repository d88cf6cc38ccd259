"""Evaluation: COCO AP on any detectron2 install, paired bootstrap intervals of AP differences, and
AutoFocus's pixel saving."""
from .coco import build_coco_evaluator, has_compiled_ops
from .efficiency import AutoFocusEfficiencyEvaluator, summarize_efficiency
from .paired_bootstrap import PerImageMatches, bootstrap_counts, paired_ap_difference

__all__ = [
    "AutoFocusEfficiencyEvaluator",
    "PerImageMatches",
    "bootstrap_counts",
    "build_coco_evaluator",
    "has_compiled_ops",
    "paired_ap_difference",
    "summarize_efficiency",
]
