"""COCOEvaluator construction that works on every detectron2 install path, and the COCO-format
pieces the benchmark shares with it: a dataset's ground truth and a prediction's results list."""
import contextlib
import importlib.util
import io
from typing import Any, Dict, List, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO

__all__ = ["build_coco_evaluator", "coco_results", "has_compiled_ops", "load_coco_ground_truth"]


def has_compiled_ops() -> bool:
    """True when detectron2 was built with its C++/CUDA extension (``detectron2._C``)."""
    return importlib.util.find_spec("detectron2._C") is not None


def build_coco_evaluator(
    dataset_name: str,
    output_dir: Optional[str] = None,
    tasks: Sequence[str] = ("bbox",),
    distributed: bool = True,
    max_dets: Optional[int] = None,
) -> COCOEvaluator:
    """COCOEvaluator for ``tasks`` ("bbox", "segm", "keypoints"); the C++ COCOeval
    (``use_fast_impl``) only where it was compiled. ``distributed``: gather the predictions of all
    processes before evaluating (Detectron2's default); False evaluates this process's predictions
    only (a single-process benchmark, or a loop that runs in every process on its own).
    ``max_dets``: the largest ``maxDets`` of COCOeval (default COCO's 100; the tools pass
    :func:`~autofocus_d2.evaluation.detection_cap.evaluation_max_dets` of their config)."""
    extra = {} if max_dets in (None, 100) else {"max_dets_per_image": int(max_dets)}
    return COCOEvaluator(
        dataset_name,
        tasks=tuple(tasks),
        distributed=bool(distributed),
        output_dir=output_dir,
        use_fast_impl=has_compiled_ops(),
        **extra,
    )


def load_coco_ground_truth(dataset_name: str) -> COCO:
    """The pycocotools COCO of ``dataset_name``'s ``json_file`` metadata (the file COCOEvaluator
    evaluates against). Raises KeyError naming the dataset when it has none."""
    metadata = MetadataCatalog.get(dataset_name)
    if not hasattr(metadata, "json_file"):
        raise KeyError(f"dataset {dataset_name!r} has no json_file in its metadata: no COCO ground truth")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return COCO(PathManager.get_local_path(metadata.json_file))


def coco_results(instances, image_id: int, dataset_name: str) -> List[Dict[str, Any]]:
    """
    A COCO results list (``image_id``, ``category_id``, ``bbox`` XYWH in the frame of
    ``instances.image_size``, ``score``; ``segmentation`` RLE with ``pred_masks``) of one image's
    predictions, with the dataset's category ids as COCOEvaluator maps them: through the inverse
    of ``thing_dataset_id_to_contiguous_id`` where the metadata has it, else the contiguous ids.
    """
    results = instances_to_coco_json(instances, image_id)
    mapping = getattr(MetadataCatalog.get(dataset_name), "thing_dataset_id_to_contiguous_id", None)
    if mapping:
        reverse = {v: k for k, v in mapping.items()}
        for r in results:
            if r["category_id"] not in reverse:
                raise ValueError(f"predicted class {r['category_id']} is not among the contiguous ids of "
                                 f"{dataset_name!r}'s thing_dataset_id_to_contiguous_id ({sorted(reverse)})")
            r["category_id"] = reverse[r["category_id"]]
    return results
