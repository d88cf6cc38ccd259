"""The SAHI rows of the benchmark: SAHI's sliced inference on the same detector AutoFocus runs.

SAHI (``sahi.predict.get_sliced_prediction``) drives :class:`autofocus_d2.integrations.sahi.AutoFocusSahiModel`
(SAHI's own Detectron2 wrapper around the very model object of the other rows). Two settings:

* ``sahi`` -- matched to AutoFocus: slices as large as the finest scale's smallest chip
  (:func:`sahi_slice_params`), resized by the finest zoom, merged with class-wise NMS at our
  ``MODEL.AUTOFOCUS.NMS_THRESH``.
* ``sahi@S`` -- SAHI as its users run it: S x S slices of the ORIGINAL image at the original
  resolution, overlap 0.2, and SAHI's own merge settings (GREEDYNMM/IOS 0.5, which SAHI itself
  switches to NMS/IOU below a confidence of 0.1). ``sahi@512`` is SAHI's default.

Both keep SAHI's standard prediction (the whole image, run at scale 0 of MODEL.AUTOFOCUS.SCALES)
and the ``DETECTIONS_PER_IMAGE`` best detections, like every other row.

Frames: "original" is the image given to :func:`run_sahi`; a slice's frame is its crop of the
original image; the detector input is that crop after its resize.
"""
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from ..config import per_transition
from ..inference.pipeline import build_autofocus_pipeline
from ..structures import ImageStats, ScaleChain, scale_zoom
from ..structures.views import zoomed_hw
from ..integrations.sahi import AutoFocusSahiModel, require_sahi
from .timing import DetectorPass

__all__ = [
    "SAHI_DEFAULT_OVERLAP",
    "SahiOutput",
    "SahiSliceParams",
    "parse_sahi_method",
    "run_sahi",
    "sahi_method",
    "sahi_pixels",
    "sahi_slice_boxes",
    "sahi_slice_params",
]

SAHI_DEFAULT_OVERLAP = 0.2  # SAHI's default overlap_height_ratio / overlap_width_ratio


class SahiSliceParams(NamedTuple):
    """``slice_size``: square slice side in ORIGINAL pixels; ``overlap``: SAHI's overlap ratio of
    neighbouring slices; ``zoom``: detector-input pixels per original pixel of a slice."""

    slice_size: int
    overlap: float
    zoom: float


def sahi_slice_params(cfg, image_hw: Tuple[int, int]) -> SahiSliceParams:
    """
    SAHI's slices matched to the finest scale's chips, for an ORIGINAL image of ``image_hw``.

    A chip of the finest scale is at least ``MIN_CHIP_SIZE`` (of the last transition) pixels of
    the scale before it (zoom ``z_parent``), i.e. ``MIN_CHIP_SIZE / z_parent`` ORIGINAL pixels, seen
    at the finest zoom ``z``. SAHI slices of that side at that zoom are the smallest chip the finest
    scale processes, tiled over the whole image with ``GRID_OVERLAP``.
    """
    af = cfg.MODEL.AUTOFOCUS
    zooms = ScaleChain(cfg).zooms(tuple(image_hw))
    if len(zooms) < 2:
        raise ValueError("MODEL.AUTOFOCUS.SCALES has one scale: there is no finer scale whose chips SAHI could match")
    min_chip = float(per_transition(af.MIN_CHIP_SIZE, len(zooms) - 1, "MODEL.AUTOFOCUS.MIN_CHIP_SIZE")[-1])
    if min_chip <= 0:
        raise ValueError(f"MODEL.AUTOFOCUS.MIN_CHIP_SIZE of the last transition is {min_chip}: no chip size to match")
    return SahiSliceParams(max(1, int(round(min_chip / zooms[-2]))), float(af.GRID_OVERLAP), zooms[-1])


def sahi_slice_boxes(image_hw: Tuple[int, int], slice_size: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """SAHI's slices (x0, y0, x1, y1) in ORIGINAL pixels of an (H, W) image (``get_slice_bboxes``)."""
    require_sahi()
    from sahi.slicing import get_slice_bboxes

    h, w = image_hw
    boxes = get_slice_bboxes(
        image_height=h,
        image_width=w,
        slice_height=slice_size,
        slice_width=slice_size,
        overlap_height_ratio=overlap,
        overlap_width_ratio=overlap,
        auto_slice_resolution=False,
    )
    return [tuple(int(v) for v in b) for b in boxes]


def sahi_pixels(
    image_hw: Tuple[int, int],
    *,
    slice_size: int,
    overlap: float,
    zoom: float,
    first_scale: Optional[Sequence[float]] = None,
    perform_standard_pred: bool = True,
) -> Tuple[int, int, int]:
    """(slice pixels, standard-prediction pixels, number of slices) that :func:`run_sahi` feeds the
    detector for an (H, W) image, at the detector's input scale, without running it."""
    boxes = sahi_slice_boxes(image_hw, slice_size, overlap)
    slice_pixels = sum(oh * ow for oh, ow in (zoomed_hw(box, zoom) for box in boxes))
    standard = 0
    if perform_standard_pred and len(boxes) > 1:
        if first_scale is None:
            raise ValueError("first_scale is needed to count the standard prediction's pixels")
        h, w = image_hw
        sh, sw = zoomed_hw((0, 0, w, h), scale_zoom((h, w), *first_scale))
        standard = sh * sw
    return slice_pixels, standard, len(boxes)


class SahiOutput(NamedTuple):
    """``instances``: detections in the ORIGINAL frame (pred_boxes XYXY, scores, pred_classes: our
    contiguous ids), by decreasing score. ``pixels`` = ``slice_pixels + standard_pixels``: pixels of
    the detector inputs (after the resize, before batch padding) of all passes; ``num_slices``;
    ``slice_boxes``: the slices in original pixels; ``passes``: every detector pass (scale 0: the
    standard prediction, 1: a slice) with its pixels and seconds."""

    instances: Instances
    pixels: int
    num_slices: int
    slice_pixels: int
    standard_pixels: int
    slice_boxes: List[Tuple[int, int, int, int]]
    passes: List[DetectorPass]


def run_sahi(
    sahi_model: AutoFocusSahiModel,
    image: np.ndarray,
    *,
    slice_size: int,
    overlap: float,
    zoom: float,
    confidence: float,
    image_format: Optional[str] = None,
    perform_standard_pred: bool = True,
    postprocess_type: str = "GREEDYNMM",
    postprocess_match_metric: str = "IOS",
    postprocess_match_threshold: float = 0.5,
    postprocess_class_agnostic: bool = False,
    force_postprocess_type: bool = False,
) -> SahiOutput:
    """
    SAHI's ``get_sliced_prediction`` on one image.

    Args:
        sahi_model: an :class:`AutoFocusSahiModel` (build it once for many images).
        image: (H, W, 3) uint8 array, the ORIGINAL image.
        slice_size: square slice side in ORIGINAL pixels.
        overlap: overlap ratio of neighbouring slices (SAHI's overlap_height/width_ratio).
        zoom: every slice is resized by this before the detector (boxes are mapped back).
        confidence: SAHI's confidence threshold (scores below it are dropped).
        image_format: channel order of ``image``, "RGB" or "BGR"; default the model's INPUT.FORMAT
            (the array ``detection_utils.read_image(path, format=cfg.INPUT.FORMAT)`` returns).
        perform_standard_pred: SAHI's extra whole-image pass (at scale 0; only run, and counted,
            when there is more than one slice, as SAHI does). Default: SAHI's (True).
        postprocess_*, force_postprocess_type: SAHI's merge of the detections, with SAHI's defaults.
    """
    require_sahi()
    from sahi.predict import get_sliced_prediction

    if not isinstance(sahi_model, AutoFocusSahiModel):
        raise TypeError(f"run_sahi needs an AutoFocusSahiModel, got {type(sahi_model).__name__}")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = (image.shape, image.dtype) if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"run_sahi expects an (H, W, 3) uint8 image, got {desc}")
    detector = sahi_model.model
    fmt = image_format or detector.input_format
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {fmt!r}")
    rgb = np.ascontiguousarray(image if fmt == "RGB" else image[:, :, ::-1])  # SAHI's arrays are RGB
    h, w = rgb.shape[:2]
    slice_boxes = sahi_slice_boxes((h, w), slice_size, overlap)

    previous_zoom = detector.zoom
    detector.zoom = float(zoom)
    sahi_model.set_full_image_size((h, w) if perform_standard_pred and len(slice_boxes) > 1 else None)
    detector.calls = []
    try:
        result = get_sliced_prediction(
            rgb,
            sahi_model,
            slice_height=slice_size,
            slice_width=slice_size,
            overlap_height_ratio=overlap,
            overlap_width_ratio=overlap,
            perform_standard_pred=perform_standard_pred,
            postprocess_type=postprocess_type,
            postprocess_match_metric=postprocess_match_metric,
            postprocess_match_threshold=postprocess_match_threshold,
            postprocess_class_agnostic=postprocess_class_agnostic,
            force_postprocess_type=force_postprocess_type,
            auto_slice_resolution=False,
            confidence_threshold=confidence,
            verbose=0,
        )
        calls = list(detector.calls)
    finally:
        sahi_model.set_full_image_size(None)
        detector.zoom = previous_zoom

    slice_calls = [c for c in calls if c.kind == "slice"]
    if len(slice_calls) != len(slice_boxes):
        raise RuntimeError(f"SAHI ran {len(slice_calls)} slices, expected {len(slice_boxes)} ({slice_boxes})")
    preds = result.object_prediction_list
    boxes = torch.tensor([p.bbox.to_xyxy() for p in preds], dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor([p.score.value for p in preds], dtype=torch.float32)
    classes = torch.tensor([p.category.id for p in preds], dtype=torch.int64)
    order = torch.argsort(scores, descending=True, stable=True)
    instances = Instances((h, w))
    instances.pred_boxes = Boxes(boxes[order])
    instances.scores = scores[order]
    instances.pred_classes = classes[order]
    slice_pixels = sum(c.pixels for c in slice_calls)
    standard_pixels = sum(c.pixels for c in calls if c.kind == "full")
    passes = [DetectorPass(0 if c.kind == "full" else 1, c.pixels, c.seconds) for c in calls]
    return SahiOutput(instances, slice_pixels + standard_pixels, len(slice_boxes), slice_pixels,
                      standard_pixels, slice_boxes, passes)


def parse_sahi_method(name: str) -> Optional[int]:
    """None for ``sahi`` (matched to the finest chip), S for ``sahi@S``; ValueError otherwise."""
    if name == "sahi":
        return None
    prefix, _, size = name.partition("@")
    if prefix != "sahi" or not size.isdigit() or int(size) <= 0:
        raise ValueError(f"{name!r} is not a SAHI method: 'sahi' or 'sahi@S' with S a slice side in pixels")
    return int(size)


def sahi_method(model, cfg, name: str = "sahi") -> Callable:
    """A predict function (one input dict -> ``instances``, ``autofocus`` stats, ``detector_passes``)
    running the SAHI setting ``name`` (see the module docstring) with ``model`` itself.
    Raises ImportError when SAHI is absent."""
    slice_side = parse_sahi_method(name)
    require_sahi()
    confidence = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
    sahi_model = AutoFocusSahiModel(cfg, model=model, confidence_threshold=confidence)
    pipeline = build_autofocus_pipeline(cfg)
    max_det = pipeline.detections_per_image  # the final cap of every row (detection_cap.py)

    def predict(x):
        image = x["image"].permute(1, 2, 0).numpy()  # HWC, in the model's INPUT.FORMAT
        h, w = image.shape[:2]
        if slice_side is None:
            params = sahi_slice_params(cfg, (h, w))
            merge = dict(postprocess_type="NMS", postprocess_match_metric="IOU",
                         postprocess_match_threshold=cfg.MODEL.AUTOFOCUS.NMS_THRESH,
                         force_postprocess_type=True)
        else:
            params = SahiSliceParams(slice_side, SAHI_DEFAULT_OVERLAP, 1.0)
            merge = {}  # SAHI's own defaults
        result = run_sahi(sahi_model, image, slice_size=params.slice_size, overlap=params.overlap,
                          zoom=params.zoom, confidence=confidence, **merge)
        instances = result.instances
        keep = torch.argsort(instances.scores, descending=True)[:max_det]
        return {
            "instances": instances[keep],
            "autofocus": ImageStats(
                pixels_per_scale=[result.standard_pixels, result.slice_pixels],
                chips_per_scale=[1 if result.standard_pixels else 0, result.num_slices],
                pyramid_pixels_per_scale=pipeline.pyramid_pixels((h, w)),
            ).to_dict(),
            "detector_passes": result.passes,
        }

    return predict
