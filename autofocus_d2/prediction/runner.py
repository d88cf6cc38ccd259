"""Predict over a collection of images with one or several processes (Detectron2's ``launch``),
resumably. :func:`predict` is the library entry point; ``tools/predict.py`` its command line.

Every process builds the model and the same list of pending inputs (process 0 decides which are
pending and shares the list), predicts its own shard (sharding.py) through a data loader, writes
one JSON per image (outputs.py) and logs its progress. At the end the figures and failures of all
processes are gathered, and process 0 writes ``failures.json``, ``summary.json`` and, on request,
the merged COCO results.
"""
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from detectron2.modeling import build_model
from detectron2.utils import comm

from ..checkpoint import load_weights
from ..data import register_coco_datasets
from ..evaluation.detection_cap import DetectionCapCounter, detection_cap, score_floor
from ..model_metadata import load_tool_config
from ..utils.distributed import launch_starts_cpu_processes
from .inputs import PredictionInput, PredictionMapper, collect_inputs
from ..utils.atomic_files import write_json_atomic
from .outputs import (
    coco_results,
    model_fingerprint,
    pending_inputs,
    prediction_path,
    prediction_record,
    read_complete_record,
)
from .sharding import build_prediction_loader, shard_indices

__all__ = ["PredictOptions", "predict", "predict_worker", "ProgressLog"]

SUMMARY_FILE = "summary.json"
FAILURES_FILE = "failures.json"
COCO_RESULTS_FILE = "coco_instances_results.json"


@dataclass
class PredictOptions:
    """What to predict and where (the arguments of ``tools/predict.py`` except the distributed ones).

    Attributes:
        config_file: the model's config (yacs .yaml); None / "": the config recorded in the weights
            (MODEL.WEIGHTS of ``opts``) by train_net.py.
        inputs: folders, globs, list files, image files or registered dataset names
            (:func:`~autofocus_d2.prediction.inputs.collect_inputs`).
        output: the output folder (created); shared by every process and machine.
        opts: config overrides, KEY VALUE pairs.
        register_coco: ``(name, json, image_dir)`` datasets to register first (in every process).
        batch_size: images per model call (several images share the detector passes of a scale).
        num_workers: data loader processes reading images, per prediction process.
        overwrite: predict every input again, complete outputs included.
        coco_results: also write every image's detections as one COCO results JSON here
            (None: not written).
        log_period: seconds between progress lines of a process.
        confidence_threshold: if given, MODEL.ROI_HEADS.SCORE_THRESH_TEST (as demo.py).
    """

    config_file: Optional[str]
    inputs: Sequence[str]
    output: str
    opts: Sequence[str] = ()
    register_coco: Sequence[Sequence[str]] = ()
    batch_size: int = 1
    num_workers: int = 0
    overwrite: bool = False
    coco_results: Optional[str] = None
    log_period: float = 10.0
    confidence_threshold: Optional[float] = None
    metadata_name: Optional[str] = field(default=None, repr=False)  # set by predict()


def _setup_cfg(options: PredictOptions):
    opts = list(options.opts)
    if options.confidence_threshold is not None:
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", options.confidence_threshold,
                 "MODEL.RETINANET.SCORE_THRESH_TEST", options.confidence_threshold]
    cfg = load_tool_config(options.config_file or None, opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available; "
                         "run on the CPU with --opts MODEL.DEVICE cpu")
    return cfg


def _metadata_name(options: PredictOptions, cfg) -> Optional[str]:
    """Class names and dataset ids come from the first input that is a registered dataset, else
    from DATASETS.TEST[0] (as demo.py)."""
    for spec in options.inputs:
        if not os.path.exists(spec) and spec in DatasetCatalog.list():
            return spec
    return cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None


def _process_logger(output: str) -> logging.Logger:
    """A logger of this process that writes to the console and to ``<output>/log.txt`` (process 0)
    or ``log.txt.rank<R>``, one plain line per message (no carriage returns: readable in files)."""
    rank = comm.get_rank()
    logger = logging.getLogger(f"autofocus_d2.prediction.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter(f"[%(asctime)s rank {rank}/{comm.get_world_size()}] %(message)s", "%H:%M:%S")
    name = "log.txt" if rank == 0 else f"log.txt.rank{rank}"
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(output, name))):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


class ProgressLog:
    """Progress of one process as log lines: ``[#####.....] 25/50 (50%) 1.20 images/s ETA 0:00:21``,
    at most one every ``period`` seconds, and always for the last image."""

    def __init__(self, logger: logging.Logger, total: int, period: float, width: int = 20):
        self.logger, self.total, self.period, self.width = logger, total, period, width
        self.done = 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < self.period and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        filled = self.width * self.done // max(self.total, 1)
        eta = int((self.total - self.done) / rate) if rate > 0 else 0
        self.logger.info(
            f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"({100 * self.done // max(self.total, 1)}%) {rate:.2f} images/s "
            f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        )


def _run_model(model, batch: List[Dict[str, Any]]) -> List[Any]:
    """The model's output for each record of ``batch``, or the exception it raised for it (a batch
    that fails is retried image by image, so one bad image fails alone)."""
    try:
        with torch.no_grad():
            return list(model(batch))
    except Exception as e:  # noqa: BLE001 - any error of one image is recorded, the run goes on
        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        if len(batch) == 1:
            return [e]
        return [out for record in batch for out in _run_model(model, [record])]


def _class_names(metadata_name: Optional[str], num_classes: int, logger) -> Optional[List[str]]:
    if metadata_name is None:
        return None
    names = MetadataCatalog.get(metadata_name).get("thing_classes", None)
    if names is not None and len(names) != num_classes:
        logger.warning(f"{metadata_name} has {len(names)} thing_classes but the model predicts "
                       f"{num_classes} classes: outputs carry no category_name")
        return None
    return names


def predict_worker(options: PredictOptions, inputs: Sequence[PredictionInput]) -> None:
    """The work of one process (``main_func`` of Detectron2's ``launch``); see the module doc."""
    register_coco_datasets(options.register_coco)
    cfg = _setup_cfg(options)
    logger = _process_logger(options.output)
    try:
        _predict_shard(options, inputs, cfg, logger)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()


def _predict_shard(options: PredictOptions, inputs: Sequence[PredictionInput], cfg, logger) -> None:
    rank, world = comm.get_rank(), comm.get_world_size()
    if cfg.MODEL.DEVICE == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    fingerprint = model_fingerprint(cfg)

    pending = pending_inputs(inputs, options.output, fingerprint, options.overwrite) if rank == 0 else None
    pending = comm.all_gather(pending)[0]  # process 0's list, in every process
    mine = [pending[j] for j in shard_indices(len(pending), world, rank)]
    if rank == 0:
        logger.info(f"{len(inputs)} inputs: {len(inputs) - len(pending)} already done "
                    f"(fingerprint {fingerprint[:12]}), {len(pending)} to predict over {world} process(es)")

    model = build_model(cfg)
    if getattr(model, "pipeline", None) is None:
        raise ValueError(f"{cfg.MODEL.META_ARCHITECTURE} has no AutoFocus pipeline; use a config "
                         "with META_ARCHITECTURE AutoFocusRCNN or AutoFocusRetinaNet")
    model.eval()
    load_weights(model, cfg.MODEL.WEIGHTS)  # weights that do not fit the model are an error
    num_classes = model.roi_heads.num_classes if hasattr(model, "roi_heads") else model.num_classes
    names = _class_names(options.metadata_name, num_classes, logger)

    loader = build_prediction_loader(inputs, PredictionMapper.from_config(cfg), mine,
                                     batch_size=options.batch_size, num_workers=options.num_workers)
    progress = ProgressLog(logger, len(mine), options.log_period)
    failures, done, pixels, pyramid = [], 0, 0, 0
    capped = DetectionCapCounter(detection_cap(cfg), min_score=score_floor(cfg))

    def fail(item: PredictionInput, reason: str) -> None:
        failures.append((item, reason))
        logger.warning(f"failed: {item.file_name}: {reason}")

    start = time.perf_counter()
    for batch in loader:
        readable = [r for r in batch if "failure" not in r]
        for record in batch:
            if "failure" in record:
                fail(record["input"], record["failure"])
        outputs = _run_model(model, readable) if readable else []
        for record, output in zip(readable, outputs):
            item = record["input"]
            if isinstance(output, Exception):
                fail(item, f"prediction failed: {type(output).__name__}: {output}")
                continue
            capped.add(output["instances"].scores, output["instances"].pred_boxes.tensor)
            result = prediction_record(item, output, record["height"], record["width"], fingerprint, names)
            write_json_atomic(prediction_path(options.output, item), result)
            done += 1
            pixels += sum(result["autofocus"].get("pixels_per_scale", []))
            pyramid += sum(result["autofocus"].get("pyramid_pixels_per_scale", []))
        progress.update(len(batch))
    seconds = time.perf_counter() - start
    logger.info(f"done: {done} images predicted, {len(failures)} failed in {seconds:.1f} s "
                f"({done / max(seconds, 1e-9):.2f} images/s)")

    gathered = comm.all_gather({
        "done": done, "seconds": seconds, "pixels": pixels, "pyramid_pixels": pyramid,
        "at_cap": capped.images_at_cap, "cap": capped.cap, "min_score": capped.min_score,
        "failures": [{"file_name": i.file_name, "key": i.key, "reason": r} for i, r in failures],
    })
    if rank == 0:
        _finish(options, inputs, fingerprint, gathered, len(inputs) - len(pending), logger)
    comm.synchronize()


def _finish(options, inputs, fingerprint, gathered, skipped, logger) -> None:
    """Process 0, after every process is done: failures.json, the merged COCO results, summary.json
    and the closing figures."""
    failures = sorted((f for g in gathered for f in g["failures"]), key=lambda f: f["key"])
    write_json_atomic(os.path.join(options.output, FAILURES_FILE), failures)
    done = sum(g["done"] for g in gathered)
    seconds = max(g["seconds"] for g in gathered)
    pixels, pyramid = sum(g["pixels"] for g in gathered), sum(g["pyramid_pixels"] for g in gathered)
    summary = {
        "inputs": len(inputs), "predicted": done, "skipped_complete": skipped, "failed": len(failures),
        "processes": len(gathered), "seconds": seconds, "images_per_second": done / max(seconds, 1e-9),
        "pixels": pixels, "pyramid_pixels": pyramid, "fingerprint": fingerprint,
    }
    if options.coco_results:
        records = [read_complete_record(prediction_path(options.output, item), fingerprint)
                   for item in inputs]
        meta = MetadataCatalog.get(options.metadata_name) if options.metadata_name else None
        id_map = meta.get("thing_dataset_id_to_contiguous_id", None) if meta is not None else None
        results = coco_results([r for r in records if r is not None], id_map)
        write_json_atomic(options.coco_results, results)
        summary["coco_results"] = {"file": options.coco_results, "images": sum(r is not None for r in records),
                                   "detections": len(results)}
        logger.info(f"COCO results of {summary['coco_results']['images']} images: {options.coco_results}")
    capped = DetectionCapCounter(gathered[0]["cap"], "predict", gathered[0]["min_score"])
    capped.add_counts(done, sum(g["at_cap"] for g in gathered))
    summary["images_at_detection_cap"] = capped.images_at_cap
    capped.warn(logger)
    write_json_atomic(os.path.join(options.output, SUMMARY_FILE), summary)
    share = f" = {pixels / pyramid:.3f} of the pyramid's {pyramid / 1e6:.1f} MP" if pyramid else ""
    logger.info(
        f"{done} images predicted in {seconds:.1f} s by {len(gathered)} process(es): "
        f"{summary['images_per_second']:.2f} images/s; pixels processed {pixels / 1e6:.1f} MP{share}; "
        f"{skipped} already done; {len(failures)} failed"
        + (f" (listed in {os.path.join(options.output, FAILURES_FILE)})" if failures else "")
    )


def predict(
    options: PredictOptions,
    *,
    num_gpus: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
) -> Dict[str, Any]:
    """
    Predict every input of ``options`` with ``num_gpus`` processes per machine (GPUs, or CPU
    processes with MODEL.DEVICE cpu where Detectron2's ``launch`` starts them) on ``num_machines``
    machines, through Detectron2's ``launch``. Returns the run's summary (``summary.json``: counts,
    images/s, pixels; ``failed`` > 0 when any input failed; the list is in ``failures.json``), or
    an empty dict on a machine that does not see process 0's output folder.

    Raises:
        ValueError: bad inputs or config, or several CPU processes where ``launch`` cannot start them.
    """
    register_coco_datasets(options.register_coco)
    cfg = _setup_cfg(options)
    if num_gpus * num_machines > 1 and cfg.MODEL.DEVICE == "cpu" and not torch.cuda.is_available() \
            and not launch_starts_cpu_processes():
        raise ValueError("several processes with MODEL.DEVICE cpu: this Detectron2's launch() starts "
                         "them only with CUDA (0.6; upstream main uses gloo); use --num-gpus 1")
    if num_machines > 1 and dist_url == "auto":
        raise ValueError("--dist-url auto works on one machine only; give tcp://HOST:PORT of machine 0")
    inputs = collect_inputs(options.inputs)
    options.metadata_name = _metadata_name(options, cfg)
    model_fingerprint(cfg)  # fails here, before any process starts, on missing weights
    os.makedirs(options.output, exist_ok=True)
    summary_file = os.path.join(options.output, SUMMARY_FILE)
    if machine_rank == 0 and os.path.exists(summary_file):
        os.remove(summary_file)  # the previous run's; a new one is written at the end
    launch(predict_worker, num_gpus, num_machines=num_machines, machine_rank=machine_rank,
           dist_url=dist_url, args=(options, inputs))
    if not os.path.exists(summary_file):
        return {}
    with open(summary_file) as f:
        return json.load(f)
