"""Side-by-side measurement of inference methods on one set of weights.

Every method sees the same images, in the same process, after a warm-up, interleaved image by
image and repeated (:func:`measure_methods`): ``single``, ``pyramid``,
``grid``, ``autofocus`` (and any other registered chip policy, e.g. ``oracle``) run the one
pipeline; ``sahi``/``sahi@S`` are SAHI's sliced inference (sahi_method.py) and ``tta`` Detectron2's
multi-scale test (tta_method.py) over the same model object. Per method: COCO AP (Detectron2's
COCOEvaluator; box and, with MODEL.MASK_ON, mask AP) and the COCO results, pixels and chips per
image, median wall time per image per repeat, the time split (timing.py) and peak memory.
"""
import contextlib
import io
import logging
import os
import resource
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import annotations_to_instances, build_augmentation, check_image_size

from ..evaluation import build_coco_evaluator, coco_results
from ..inference.pipeline import build_autofocus_pipeline
from ..utils.image_io import read_image
from ..utils.quiet_logs import progress as show_progress
from .sahi_method import sahi_method
from .timing import TimedFocusDetector, attribute_passes, summarize_time_split

__all__ = ["MemoryMeter", "load_inputs", "measure_method", "measure_methods", "pipeline_method", "sahi_method"]

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


class _MethodRecord:
    """What one method's passes leave: per repeat the times and detector passes of every image;
    from the first pass the per-image statistics, the evaluator and the COCO results."""

    def __init__(self, name: str, repeats: int):
        self.name = name
        self.times: List[List[float]] = [[] for _ in range(repeats)]
        self.passes: List[List[List[Any]]] = [[] for _ in range(repeats)]
        self.pixels, self.chips, self.pyramid, self.per_scale = [], [], [], []
        self.evaluator = None
        self.with_masks = False
        self.results: List[Dict[str, Any]] = []
        self.peak_mb = 0.0

    def first_pass(self, x, out, *, dataset_name: Optional[str], evaluate: bool, mask_on: bool) -> None:
        stats = out["autofocus"]
        self.pixels.append(sum(stats["pixels_per_scale"]))
        self.chips.append(sum(stats["chips_per_scale"][1:]))
        self.pyramid.append(sum(stats["pyramid_pixels_per_scale"]))
        self.per_scale.append(stats["pixels_per_scale"])
        if not evaluate:
            return
        instances = out["instances"].to("cpu")
        if self.evaluator is None:  # the tasks follow what the method's outputs carry
            self.with_masks = mask_on and instances.has("pred_masks")
            tasks = ("bbox", "segm") if self.with_masks else ("bbox",)
            self.evaluator = build_coco_evaluator(dataset_name, tasks=tasks, distributed=False)
            self.evaluator.reset()
        elif self.with_masks != instances.has("pred_masks"):
            raise RuntimeError(f"{self.name}: some outputs carry pred_masks and some do not")
        self.evaluator.process([x], [{"instances": instances}])
        self.results.extend(coco_results(instances, x["image_id"], dataset_name))

    def row(self, image_ids: List[Any]) -> Dict[str, Any]:
        results: Dict[str, Any] = {}
        if self.evaluator is not None:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own tables
                results = self.evaluator.evaluate(img_ids=image_ids) or {}
        done = [r for r in range(len(self.times)) if self.times[r]]
        splits = [summarize_time_split(self.times[r], self.passes[r]) for r in done]
        split = {k: _median_or_none([s[k] for s in splits]) for k in splits[0]}
        repeat_medians = [statistics.median(self.times[r]) for r in done]
        num_scales = max(len(p) for p in self.per_scale)
        n = len(self.pixels)
        return {
            "method": self.name,
            **_box_and_mask_ap(results),
            "pixels_per_image": sum(self.pixels) / n,
            "pyramid_pixels_per_image": sum(self.pyramid) / n,
            "pixels_per_scale": [sum(p[k] if k < len(p) else 0 for p in self.per_scale) / n
                                 for k in range(num_scales)],
            "chips_per_image": sum(self.chips) / n,
            "median_time_s": statistics.median(repeat_medians),
            "repeats": len(done),
            "repeat_median_time_s": repeat_medians,
            "repeat_scale0_ms_per_mpix": [sp["scale0_ms_per_mpix"] for sp in splits],
            **split,
            "peak_memory_mb": self.peak_mb,
            "images": n,
            "evaluated": sorted(results),
        }


def _median_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def measure_methods(
    methods: Sequence[Tuple[str, Callable[[Dict[str, Any]], Dict[str, Any]]]],
    inputs: Sequence[Dict[str, Any]],
    *,
    dataset_name: Optional[str],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 3,
    repeats_of: Optional[Dict[str, int]] = None,
    progress: bool = True,
    evaluate: bool = True,
    mask_on: bool = False,
) -> Tuple[List[Dict[str, Any]], Dict[str, List[Dict[str, Any]]]]:
    """
    Time the ``(name, predict)`` methods side by side: each image goes through every method in
    turn, the order rotating by one method per image and per repeat (so no method always runs
    first, or after the same one); the whole pass over the images is repeated ``repeats`` times
    (``repeats_of[name]`` for a method timed fewer times, e.g. a sweep setting: it takes part in
    the first passes only). ``warmup`` images per method run first, untimed.

    ``predict``: one input dict -> output dict with ``instances``, ``autofocus`` stats and
    ``detector_passes`` (its :class:`DetectorPass` es, scales attributed).

    Returns one row per method and each method's COCO results list (``{}`` without ``evaluate``).
    A row: COCO AP of the boxes (``AP``...) and, with ``mask_on`` and outputs that carry
    ``pred_masks``, of the masks (``mask_AP``...; NaN otherwise or without ``evaluate``), computed
    from the FIRST pass (repeats give the same detections); pixels and chips per image;
    ``repeat_median_time_s`` (median time per image of each repeat), ``median_time_s`` (their
    median), the time split of :func:`summarize_time_split` (each figure the median over repeats;
    ``repeat_scale0_ms_per_mpix`` per repeat);
    the largest peak memory of the method's calls.
    """
    device = torch.device(device)
    if evaluate and not dataset_name:
        raise ValueError("measure_methods needs dataset_name to evaluate AP (or evaluate=False)")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = [name for name, _ in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    repeats_of = {name: min(repeats, (repeats_of or {}).get(name, repeats)) for name in names}
    if min(repeats_of.values(), default=1) < 1:
        raise ValueError(f"every method needs at least one timed pass, got repeats_of={repeats_of}")
    records = {name: _MethodRecord(name, repeats) for name in names}
    meter = MemoryMeter(device)
    with torch.no_grad():
        for name, predict in methods:
            for x in inputs[:warmup]:
                predict(x)
        _sync(device)
        for r in range(repeats):
            active = [(name, predict) for name, predict in methods if r < repeats_of[name]]
            desc = f"repeat {r + 1}/{repeats}" if repeats > 1 else "benchmark"
            # tqdm on a terminal, a plain line every 10 s in a log file
            for i, x in enumerate(show_progress(inputs, desc, enabled=progress and bool(active))):
                shift = (i + r) % max(1, len(active))
                for name, predict in active[shift:] + active[:shift]:
                    record = records[name]
                    meter.reset()
                    _sync(device)
                    start = time.perf_counter()
                    out = predict(x)
                    _sync(device)
                    record.times[r].append(time.perf_counter() - start)
                    record.peak_mb = max(record.peak_mb, meter.peak_mb())
                    record.passes[r].append(list(out["detector_passes"]))
                    if r == 0:
                        record.first_pass(x, out, dataset_name=dataset_name, evaluate=evaluate, mask_on=mask_on)
    image_ids = [x["image_id"] for x in inputs]
    rows = []
    for name in names:
        row = records[name].row(image_ids)
        row["memory_kind"] = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        rows.append(row)
    results = {name: records[name].results for name in names} if evaluate else {}
    return rows, results


def measure_method(
    name: str,
    predict: Callable[[Dict[str, Any]], Dict[str, Any]],
    inputs: Sequence[Dict[str, Any]],
    *,
    dataset_name: Optional[str],
    device: torch.device,
    warmup: int = 1,
    repeats: int = 1,
    progress: bool = True,
    evaluate: bool = True,
    mask_on: bool = False,
) -> Dict[str, Any]:
    """One method's row of :func:`measure_methods` (its COCO results left out)."""
    rows, _ = measure_methods([(name, predict)], inputs, dataset_name=dataset_name, device=device,
                              warmup=warmup, repeats=repeats, progress=progress, evaluate=evaluate,
                              mask_on=mask_on)
    return rows[0]


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
