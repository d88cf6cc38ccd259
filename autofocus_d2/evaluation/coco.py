"""COCOEvaluator construction that works on every detectron2 install path."""
import importlib.util
from typing import Optional, Sequence

from detectron2.evaluation import COCOEvaluator

__all__ = ["has_compiled_ops", "build_coco_evaluator"]


def has_compiled_ops() -> bool:
    """True when detectron2 was built with its C++/CUDA extension (``detectron2._C``)."""
    return importlib.util.find_spec("detectron2._C") is not None


def build_coco_evaluator(
    dataset_name: str,
    output_dir: Optional[str] = None,
    tasks: Sequence[str] = ("bbox",),
    distributed: bool = True,
) -> COCOEvaluator:
    """COCOEvaluator for ``tasks`` ("bbox", "segm", "keypoints"); the C++ COCOeval
    (``use_fast_impl``) only where it was compiled. ``distributed``: gather the predictions of all
    processes before evaluating (Detectron2's default); False evaluates this process's predictions
    only (a single-process benchmark, or a loop that runs in every process on its own)."""
    return COCOEvaluator(
        dataset_name,
        tasks=tuple(tasks),
        distributed=bool(distributed),
        output_dir=output_dir,
        use_fast_impl=has_compiled_ops(),
    )
