"""Evaluation: COCO AP on any detectron2 install, and AutoFocus's pixel saving."""
from .coco import build_coco_evaluator, has_compiled_ops
from .efficiency import AutoFocusEfficiencyEvaluator, summarize_efficiency

__all__ = [
    "AutoFocusEfficiencyEvaluator",
    "build_coco_evaluator",
    "has_compiled_ops",
    "summarize_efficiency",
]
