"""Side-by-side measurement of inference methods on one set of weights.

Every method sees the same images, in the same process, after a warm-up: ``single``, ``pyramid``,
``grid``, ``autofocus`` (and any other registered chip policy, e.g. ``oracle``) run the one
pipeline; ``sahi``/``sahi@S`` are SAHI's sliced inference (sahi_method.py) and ``tta`` Detectron2's
multi-scale test (tta_method.py) over the same model object. Per method: COCO AP (Detectron2's
COCOEvaluator; box and, with MODEL.MASK_ON, mask AP), pixels and chips per image, median wall time
per image, the time split (timing.py) and peak memory.
"""
import contextlib
import io
import logging
import os
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import annotations_to_instances, build_augmentation, check_image_size

from ..evaluation import build_coco_evaluator
from ..inference.pipeline import build_autofocus_pipeline
from ..utils.image_io import read_image
from .sahi_method import sahi_method
from .timing import TimedFocusDetector, attribute_passes, summarize_time_split

__all__ = ["MemoryMeter", "load_inputs", "measure_method", "pipeline_method", "sahi_method"]

logger = logging.getLogger(__name__)


class MemoryMeter:
    """Peak memory of a block: CUDA max allocated on CUDA, else the process's peak RSS (Linux
    resets the peak through /proc/self/clear_refs; elsewhere the process-wide peak is reported)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/clear_refs"):
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_inputs(
    cfg, dataset_name: str, max_images: Optional[int] = None, *, with_ground_truth: bool = False
) -> List[Dict[str, Any]]:
    """The dataset's test inputs as Detectron2's test mapper makes them (original resolution when
    INPUT.MIN_SIZE_TEST is 0), the first ``max_images`` of them; the files are read by
    :func:`autofocus_d2.utils.read_image` (every PIL mode handled or refused naming the file,
    INPUT.MAX_IMAGE_MPIX), then resized by the test augmentations of ``cfg``.

    The test mapper drops the annotations; with ``with_ground_truth`` each input keeps them as
    ``x["instances"]``: Instances of the ORIGINAL image size (``height``, ``width``) with
    ``gt_boxes`` (XYXY, original frame) and ``gt_classes`` (contiguous ids), crowd regions left out
    -- what a chip policy that reads the ground truth (the ``oracle``) needs."""
    if dataset_name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {dataset_name!r} is not registered; registered: {sorted(DatasetCatalog.list())}"
        )
    dicts = DatasetCatalog.get(dataset_name)
    if max_images is not None:
        dicts = dicts[:max_images]
    if not dicts:
        raise ValueError(f"dataset {dataset_name!r} has no images")
    resize = T.AugmentationList(build_augmentation(cfg, is_train=False))
    inputs = []
    for d in dicts:
        x = {k: v for k, v in d.items() if k not in ("annotations", "sem_seg_file_name")}
        image = read_image(d["file_name"], format=cfg.INPUT.FORMAT, max_mpix=cfg.INPUT.MAX_IMAGE_MPIX)
        check_image_size(d, image)
        aug = T.AugInput(image)
        resize(aug)
        x["image"] = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        if with_ground_truth:
            if "annotations" not in d:
                raise ValueError(f"dataset {dataset_name!r}: image {d.get('image_id')} has no annotations")
            annos = [a for a in d["annotations"] if not a.get("iscrowd", 0)]
            x["instances"] = annotations_to_instances(annos, (d["height"], d["width"]))
        inputs.append(x)
    return inputs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _box_and_mask_ap(results: Dict[str, Any]) -> Dict[str, float]:
    bbox, segm = results.get("bbox", {}), results.get("segm", {})
    out = {k: bbox.get(k, float("nan")) for k in ("AP", "AP50", "APs", "APm", "APl")}
    out.update({f"mask_{k}": segm.get(k, float("nan")) for k in ("AP", "AP50", "APs", "APm", "APl")})
    return out


def measure_method(
    name: str,
    predict: Callable[[Dict[str, Any]], Dict[str, Any]],
    inputs: Sequence[Dict[str, Any]],
    *,
    dataset_name: Optional[str],
    device: torch.device,
    warmup: int = 1,
    progress: bool = True,
    evaluate: bool = True,
    mask_on: bool = False,
) -> Dict[str, Any]:
    """
    Run ``predict`` (one input dict -> output dict with ``instances``, ``autofocus`` stats and
    ``detector_passes``: its :class:`DetectorPass` es, scales attributed) on every input.

    Returns COCO AP figures of the boxes (``AP``...) and, with ``mask_on`` and outputs that carry
    ``pred_masks``, of the masks (``mask_AP``...; NaN otherwise or without ``evaluate``), pixels and
    chips per image, median time per image, the time split of :func:`summarize_time_split`
    (``time_split``, also flattened into the row) and peak memory.
    """
    from tqdm import tqdm

    device = torch.device(device)
    if evaluate and not dataset_name:
        raise ValueError("measure_method needs dataset_name to evaluate AP (or evaluate=False)")
    evaluator = None
    with_masks = False
    with torch.no_grad():
        for x in inputs[:warmup]:
            predict(x)
        _sync(device)
        meter = MemoryMeter(device)
        meter.reset()
        times, passes, pixels, chips, pyramid, per_scale = [], [], [], [], [], []
        for x in tqdm(inputs, desc=f"{name:>12s}", disable=not progress, leave=False):
            _sync(device)
            start = time.perf_counter()
            out = predict(x)
            _sync(device)
            times.append(time.perf_counter() - start)
            passes.append(list(out["detector_passes"]))
            stats = out["autofocus"]
            pixels.append(sum(stats["pixels_per_scale"]))
            chips.append(sum(stats["chips_per_scale"][1:]))
            pyramid.append(sum(stats["pyramid_pixels_per_scale"]))
            per_scale.append(stats["pixels_per_scale"])
            if evaluate:
                instances = out["instances"].to("cpu")
                if evaluator is None:  # the tasks follow what the method's outputs carry
                    with_masks = mask_on and instances.has("pred_masks")
                    tasks = ("bbox", "segm") if with_masks else ("bbox",)
                    evaluator = build_coco_evaluator(dataset_name, tasks=tasks, distributed=False)
                    evaluator.reset()
                elif with_masks != instances.has("pred_masks"):
                    raise RuntimeError(f"{name}: some outputs carry pred_masks and some do not")
                evaluator.process([x], [{"instances": instances}])
        peak = meter.peak_mb()
    results: Dict[str, Any] = {}
    if evaluator is not None:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own tables
            results = evaluator.evaluate(img_ids=[x["image_id"] for x in inputs]) or {}
    split = summarize_time_split(times, passes)
    num_scales = max(len(p) for p in per_scale)
    return {
        "method": name,
        **_box_and_mask_ap(results),
        "pixels_per_image": sum(pixels) / len(pixels),
        "pyramid_pixels_per_image": sum(pyramid) / len(pyramid),
        "pixels_per_scale": [
            sum(p[k] if k < len(p) else 0 for p in per_scale) / len(per_scale) for k in range(num_scales)
        ],
        "chips_per_image": sum(chips) / len(chips),
        "median_time_s": statistics.median(times),
        **split,
        "peak_memory_mb": peak,
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "images": len(inputs),
        "evaluated": sorted(results),
    }


def pipeline_method(model, cfg, policy: str, **autofocus_overrides) -> Callable:
    """A predict function running ``model`` (same weights) through the AutoFocus pipeline with chip
    policy ``policy`` and other MODEL.AUTOFOCUS keys overridden (e.g. FOCUS_THRESHOLD=[0.3]). Its
    detector passes are timed by a :class:`TimedFocusDetector` and attributed to scales by
    :func:`attribute_passes`."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.AUTOFOCUS.CHIP_POLICY = policy
    for key, value in autofocus_overrides.items():
        setattr(cfg.MODEL.AUTOFOCUS, key, value)
    pipeline = build_autofocus_pipeline(cfg)
    timed = TimedFocusDetector(model)

    def predict(x):
        timed.take()
        out = pipeline(timed, [x])[0]
        passes = timed.take()
        scales = attribute_passes([p.pixels for p in passes], out["autofocus"]["pixels_per_scale"])
        out["detector_passes"] = [p._replace(scale=k) for p, k in zip(passes, scales)]
        return out

    return predict
