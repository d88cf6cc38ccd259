"""Dense scenes: the per-image detection cap, the COCO evaluation's ``maxDets``, and a warning when
predictions reach the cap.

One setting, ``TEST.DETECTIONS_PER_IMAGE`` (Detectron2's key, default 100), is the cap:

* each detector pass keeps at most that many detections (Detectron2's ROI heads / RetinaNet);
* AutoFocus's final merge keeps ``max(MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE, TEST.DETECTIONS_PER_IMAGE)``
  (:func:`final_detection_cap`; the built-in configs: 200, as the official code);
* the COCO evaluation counts up to ``max(100, TEST.DETECTIONS_PER_IMAGE)`` detections per image
  (:func:`evaluation_max_dets`; COCO's own 100 for the built-in configs).

An image whose prediction holds at least ``TEST.DETECTIONS_PER_IMAGE`` distinct detections scoring
at least the test score threshold (:func:`score_floor`; low-score detections, as a weak model or
``VIEW_DETECTIONS: raw`` gives by the hundred, do not count; nor do the decayed duplicates that
Soft-NMS keeps: :func:`distinct_detections`) may have lost some to a view's cap
or to the final one: :class:`DetectionCapCounter` counts such images and the
tools (demo, benchmark, predict, ``train_net.py``'s evaluation through
:class:`DetectionCapEvaluator`, the SAHI wrapper per detector pass) say so once per run. :func:`dense_scene_hint` compares a dataset's
largest object count per image (``--register-coco`` records it) with the cap.
"""
import logging
from typing import Dict, Iterable, List, Optional, Sequence

import detectron2.utils.comm as comm
import torch
from torchvision.ops import nms
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator

__all__ = [
    "CAP_KEY",
    "DetectionCapCounter",
    "DetectionCapEvaluator",
    "dense_scene_hint",
    "distinct_detections",
    "detection_cap",
    "evaluation_max_dets",
    "final_detection_cap",
    "max_objects_per_image",
    "results_at_cap",
    "score_floor",
]

logger = logging.getLogger(__name__)

CAP_KEY = "TEST.DETECTIONS_PER_IMAGE"
COCO_MAX_DETS = 100  # COCOeval's default largest maxDets


def detection_cap(cfg) -> int:
    """The per-image detection cap of ``cfg`` (``TEST.DETECTIONS_PER_IMAGE``)."""
    return int(cfg.TEST.DETECTIONS_PER_IMAGE)


def final_detection_cap(cfg) -> int:
    """Detections AutoFocus's final merge keeps per image: the larger of
    ``MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE`` and ``TEST.DETECTIONS_PER_IMAGE``."""
    return max(int(cfg.MODEL.AUTOFOCUS.DETECTIONS_PER_IMAGE), detection_cap(cfg))


def score_floor(cfg) -> float:
    """The test score threshold of ``cfg``'s detector (ROI_HEADS or RETINANET.SCORE_THRESH_TEST):
    only detections scoring at least this count towards the cap."""
    if cfg.MODEL.META_ARCHITECTURE in ("RetinaNet", "AutoFocusRetinaNet"):
        return float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
    return float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


def evaluation_max_dets(cfg) -> int:
    """The COCO evaluation's largest ``maxDets``: ``max(100, TEST.DETECTIONS_PER_IMAGE)``."""
    return max(COCO_MAX_DETS, detection_cap(cfg))


DUPLICATE_IOU = 0.5  # IoU above which two detections count as one object for the cap


def distinct_detections(scores, boxes=None, min_score: float = 0.0, iou: float = DUPLICATE_IOU) -> int:
    """
    How many detections score at least ``min_score``, counting a detection that overlaps a
    higher-scoring one by IoU > ``iou`` as the same object (class-agnostic greedy NMS). The
    Soft-NMS merge keeps such decayed duplicates above the score threshold, so without ``boxes``
    (XYXY, any one frame, shape (N, 4)) the count can exceed the objects found.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1)
    keep = scores >= min_score
    if boxes is None:
        return int(keep.sum())
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)[keep]
    return int(nms(boxes, scores[keep], iou).numel())


class DetectionCapCounter:
    """Counts the images whose prediction holds at least ``cap`` distinct detections
    (:func:`distinct_detections`) scoring at least ``min_score``, and warns once.

    Args:
        cap: the per-image cap (:func:`detection_cap`).
        what: who predicted, for the message (e.g. a benchmark method's name).
        min_score: the score from which a detection counts (:func:`score_floor`).
    """

    def __init__(self, cap: int, what: str = "predictions", min_score: float = 0.0):
        self.cap = int(cap)
        self.what = what
        self.min_score = float(min_score)
        self.images = 0
        self.images_at_cap = 0
        self.warned = False

    def add(self, scores: Sequence[float], boxes=None) -> bool:
        """Count one image whose detections have ``scores`` (a sequence or a tensor) and, if given,
        ``boxes`` (XYXY, (N, 4)); True when at least ``cap`` of them score ``min_score`` or more,
        duplicates counted once when ``boxes`` are given."""
        self.images += 1
        at_cap = distinct_detections(scores, boxes, self.min_score) >= self.cap
        self.images_at_cap += int(at_cap)
        return at_cap

    def add_counts(self, images: int, images_at_cap: int) -> None:
        """Add the totals of another counter (e.g. another process's)."""
        self.images += int(images)
        self.images_at_cap += int(images_at_cap)

    def message(self) -> Optional[str]:
        """The warning, or None when no image reached the cap."""
        if not self.images_at_cap:
            return None
        return (f"{self.what}: {self.images_at_cap} of {self.images} images reached the cap of "
                f"{self.cap} detections per image ({CAP_KEY}) with scores >= {self.min_score:g} "
                f"(overlaps above IoU {DUPLICATE_IOU:g} counted once); "
                "they may have lost detections. For "
                f"dense scenes raise it, e.g. {CAP_KEY} {max(2 * self.cap, 300)} in the config "
                "or the tool's overrides (the COCO evaluation then counts as many; docs/own_data.md)")

    def warn(self, log: Optional[logging.Logger] = None) -> Optional[str]:
        """Log :meth:`message` as a warning the first time it is not None; return it."""
        msg = self.message()
        if msg is not None and not self.warned:
            (log or logger).warning(msg)
            self.warned = True
        return msg


class DetectionCapEvaluator(DatasetEvaluator):
    """A DatasetEvaluator that counts, over all processes, the images whose ``instances`` reach the
    cap and warns once in ``evaluate`` (it adds no results)."""

    def __init__(self, cap: int, min_score: float = 0.0):
        self.counter = DetectionCapCounter(cap, "evaluation", min_score)

    def reset(self) -> None:
        self.counter = DetectionCapCounter(self.counter.cap, "evaluation", self.counter.min_score)

    def process(self, inputs, outputs) -> None:
        for output in outputs:
            if "instances" in output:
                inst = output["instances"]
                self.counter.add(inst.scores, inst.pred_boxes.tensor if inst.has("pred_boxes") else None)

    def evaluate(self):
        counts = comm.gather((self.counter.images, self.counter.images_at_cap), dst=0)
        if comm.is_main_process():
            total = DetectionCapCounter(self.counter.cap, "evaluation", self.counter.min_score)
            for images, at_cap in counts:
                total.add_counts(images, at_cap)
            total.warn()
        return None


def results_at_cap(results_by_method: Dict[str, List[dict]], num_images: int, cap: int,
                   min_score: float = 0.0) -> List[str]:
    """The cap warnings (:meth:`DetectionCapCounter.message`) of each method's COCO results list
    over ``num_images`` images, for the methods with images at the cap."""
    messages = []
    for method, results in results_by_method.items():
        per_image: Dict[int, List[dict]] = {}
        for r in results:
            per_image.setdefault(r["image_id"], []).append(r)
        counter = DetectionCapCounter(cap, method, min_score)
        at_cap = 0
        for rs in per_image.values():
            boxes = None
            if all("bbox" in r for r in rs):  # COCO results: XYWH
                boxes = torch.tensor([r["bbox"] for r in rs], dtype=torch.float32).reshape(-1, 4)
                boxes[:, 2:] += boxes[:, :2]
            at_cap += distinct_detections([r["score"] for r in rs], boxes, min_score) >= cap
        counter.add_counts(num_images, at_cap)
        if counter.message():
            messages.append(counter.message())
    return messages


def max_objects_per_image(annotations: Iterable[dict]) -> int:
    """The largest number of (non-crowd) annotations of one image in COCO ``annotations``."""
    counts = {}
    for a in annotations:
        if not a.get("iscrowd", 0):
            counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    return max(counts.values(), default=0)


def dense_scene_hint(cfg, dataset_names: Sequence[str]) -> List[str]:
    """For each of ``dataset_names`` whose metadata records ``max_objects_per_image`` (as
    ``--register-coco`` does) above the cap, the suggestion to raise ``TEST.DETECTIONS_PER_IMAGE``."""
    hints = []
    cap = detection_cap(cfg)
    for name in dataset_names:
        most = MetadataCatalog.get(name).get("max_objects_per_image", None)
        if most is not None and most > cap:
            hints.append(f"{name} has up to {most} objects per image, more than the cap of {cap} "
                         f"detections per image: set {CAP_KEY} {most + most // 2} (config or the "
                         "tool's overrides) so that none is cut")
    return hints
