"""Side-by-side benchmark of single / pyramid / grid / AutoFocus / SAHI / Detectron2 TTA on one set of weights."""
from .report import check_targets, headline_table, summary_text, write_report
from .suite import DEFAULT_METHODS, TIMING_METHODS, available_methods, run_benchmark

__all__ = ["DEFAULT_METHODS", "TIMING_METHODS", "available_methods", "check_targets", "headline_table",
           "run_benchmark", "summary_text", "write_report"]
