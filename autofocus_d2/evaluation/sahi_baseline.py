"""The SAHI baseline: SAHI's sliced inference on the same detector AutoFocus runs.

SAHI (``sahi.predict.get_sliced_prediction``) cuts the original image into overlapping square slices,
runs a detector on every slice (and, by default, once more on the whole image: its "standard
prediction"), shifts the slice detections into the original frame and merges them with its own
postprocess (GREEDYNMM / NMM / NMS / LSNMS). Here SAHI drives its own Detectron2 wrapper
(``sahi.models.detectron2.Detectron2DetectionModel``), whose ``perform_inference`` and
``_create_object_prediction_list_from_original_predictions`` are inherited unchanged; only how the
wrapper builds its model is replaced (:class:`AutoFocusSahiModel`):

* **Same weights.** SAHI's ``load_model`` does ``get_cfg()`` + ``merge_from_file`` (our MODEL.AUTOFOCUS /
  FOCUS_HEAD / COMPACT_RESNET keys would have to be let in with ``set_new_allowed``, and the compact
  backbone only exists once ``autofocus_d2`` is imported) and then ``DefaultPredictor``, which resizes by
  INPUT.MIN_SIZE_TEST (0 in our configs: AutoFocus resizes itself). Instead the wrapper takes our
  ``cfg`` (building the model with ``build_model`` and ``DetectionCheckpointer`` exactly as
  ``train_net.py`` does) or, better, the live model object itself. Each slice is run through that
  object's ``inference`` -- GeneralizedRCNN's plain single pass, which AutoFocusRCNN does not override
  -- so the backbone, RPN and ROI heads are the very modules (not a copy of their state dict) that
  every other benchmark row uses; only the FocusPixel head is idle.
* **Same views.** A slice seen at zoom ``z`` is cropped and resized exactly as the AutoFocus pipeline
  crops and resizes a chip of its finest scale (``views.crop_and_resize`` to ``views.zoomed_hw``) and
  its boxes come back through Detectron2's ``detector_postprocess`` (scaled by slice size / input size,
  clipped to the slice); SAHI then adds the slice's integer offset, so boxes land in the original frame.
  SAHI's standard prediction (the whole image) is resized to scale 0 of ``MODEL.AUTOFOCUS.SCALES``: the size
  at which the detector sees whole images (``single`` and AutoFocus's scale 0), the role
  INPUT.MIN_SIZE_TEST plays for the ``DefaultPredictor`` of SAHI's own wrapper.
* **Channel order.** SAHI's arrays are RGB; its wrapper flips them to BGR when the model's INPUT.FORMAT
  is "BGR". :func:`run_sahi` takes the image in a stated order (by default the model's INPUT.FORMAT, as
  ``detectron2.data.detection_utils.read_image(path, format=cfg.INPUT.FORMAT)`` returns it) and hands
  SAHI RGB, so the detector gets the channel order the dataset mapper gives our pipeline.

Frames: "original" is the image as given to :func:`run_sahi`; a slice's frame is its crop of the
original image; "detector input" is that crop after the resize the detector sees.
"""
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Boxes, Instances

from ..config import per_transition
from ..inference.scale_chain import ScaleChain, scale_zoom
from ..inference.views import crop_and_resize, zoomed_hw

__all__ = [
    "sahi_available",
    "SliceDetector",
    "AutoFocusSahiModel",
    "SahiSliceParams",
    "SahiOutput",
    "sahi_slice_params",
    "sahi_slice_boxes",
    "sahi_pixels",
    "run_sahi",
]

_INSTALL_HINT = "pip install -e .[bench]"

try:
    from sahi.models.detectron2 import Detectron2DetectionModel
    from sahi.predict import get_sliced_prediction
    from sahi.slicing import get_slice_bboxes

    _SAHI_ERROR: Optional[str] = None
except ImportError as e:  # optional extra: the benchmark skips its SAHI row with this reason
    _SAHI_ERROR = f"sahi is not installed: {_INSTALL_HINT} ({e})"

    class Detectron2DetectionModel:  # type: ignore[no-redef]
        """Stand-in base class so this module imports without sahi; instantiating it raises."""

        def __init__(self, *args, **kwargs):
            raise ImportError(_SAHI_ERROR)


def sahi_available() -> Tuple[bool, str]:
    """(True, "") when sahi and its Detectron2 wrapper import; else (False, the reason)."""
    return (_SAHI_ERROR is None, _SAHI_ERROR or "")


def _require_sahi() -> None:
    if _SAHI_ERROR is not None:
        raise ImportError(_SAHI_ERROR)


class DetectorCall(NamedTuple):
    """One detector pass: ``kind`` "slice" or "standard", the (h, w) of the array SAHI handed over
    (slice frame) and the (h, w) of the detector input it was resized to."""

    kind: str
    image_hw: Tuple[int, int]
    input_hw: Tuple[int, int]

    @property
    def pixels(self) -> int:
        return self.input_hw[0] * self.input_hw[1]


class SliceDetector:
    """
    What SAHI's Detectron2 wrapper calls in place of Detectron2's ``DefaultPredictor`` (its
    ``self.model``): ``input_format`` and ``self(image) -> {"instances": Instances}``.

    ``image`` is an (h, w, 3) uint8 array in ``input_format`` channel order (SAHI's wrapper flips its
    RGB arrays to BGR for a "BGR" model). It is resized to ``zoomed_hw(image, zoom)`` -- or, when its
    size is ``standard_hw`` (SAHI's full-image standard prediction; :func:`run_sahi` sets it only
    when the image needs more than one slice, so no slice can have that size), to ``first_scale`` --
    and run through ``detector.inference``. The returned Instances are in the frame of ``image``,
    on the CPU. Every pass is appended to ``calls``.
    """

    def __init__(self, detector, *, first_scale: Optional[Sequence[float]] = None):
        """
        Args:
            detector: a GeneralizedRCNN (AutoFocusRCNN included) in eval mode, or any object with
                ``inference(batched_inputs)``, ``input_format`` and ``device`` alike.
            first_scale: (shorter side, longer-side cap) in pixels of SAHI's standard prediction
                (the rule of :class:`ScaleChain`; -1 = no constraint).
        """
        if detector.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.FORMAT {detector.input_format!r}: SAHI's Detectron2 wrapper feeds RGB or BGR "
                "arrays only"
            )
        self.detector = detector
        self.input_format = detector.input_format
        self.first_scale = None if first_scale is None else tuple(float(s) for s in first_scale)
        self.zoom = 1.0
        self.standard_hw: Optional[Tuple[int, int]] = None
        self.calls: List[DetectorCall] = []

    def input_hw(self, image_hw: Tuple[int, int]) -> Tuple[Tuple[int, int], str]:
        """(detector input (h, w), kind) of an array of size ``image_hw`` handed over by SAHI."""
        h, w = image_hw
        if self.standard_hw is not None and tuple(image_hw) == tuple(self.standard_hw):
            if self.first_scale is None:
                raise ValueError(
                    "SAHI's standard (full-image) prediction needs the whole-image size: give "
                    "first_scale (MODEL.AUTOFOCUS.SCALES[0]) or perform_standard_pred=False"
                )
            return zoomed_hw((0, 0, w, h), scale_zoom((h, w), *self.first_scale)), "standard"
        return zoomed_hw((0, 0, w, h), self.zoom), "slice"

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Dict[str, Instances]:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (h, w, 3) image from SAHI, got shape {image.shape}")
        h, w = image.shape[:2]
        out_hw, kind = self.input_hw((h, w))
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        tensor = tensor.to(self.detector.device).float()
        # The pipeline's own crop/resize: a slice at zoom z is what a finest-scale chip would be.
        resized = crop_and_resize(tensor, (0, 0, w, h), out_hw)
        # height/width: detector_postprocess maps boxes from the detector input to the slice frame.
        outputs = self.detector.inference([{"image": resized, "height": h, "width": w}])
        self.calls.append(DetectorCall(kind, (h, w), tuple(out_hw)))
        return {"instances": outputs[0]["instances"].to("cpu")}


class AutoFocusSahiModel(Detectron2DetectionModel):
    """
    SAHI's Detectron2 wrapper on our detector. Its ``model`` is a :class:`SliceDetector` around the
    Detectron2 model; everything else (RGB->BGR flip, score filtering, conversion to SAHI's
    ObjectPredictions) is SAHI's inherited code. Category ids are our contiguous class ids.

    Build it once and pass it to :func:`run_sahi` for every image.
    """

    def __init__(
        self,
        cfg=None,
        *,
        model=None,
        model_path: Optional[str] = None,
        first_scale: Optional[Sequence[float]] = None,
        confidence_threshold: float = 0.05,
        device: Optional[str] = None,
        category_mapping: Optional[Dict[str, str]] = None,
        load_at_init: bool = True,
    ):
        """
        Args:
            cfg: our Detectron2 config (with the autofocus keys). Without ``model`` the detector is
                built from it (``build_model``) and loaded from ``model_path`` (default
                ``cfg.MODEL.WEIGHTS``, which must then be set).
            model: an already loaded detector (AutoFocusRCNN / GeneralizedRCNN), used as is (set to
                eval mode): the same object, hence the same weights, as the caller's.
            first_scale: whole-image size of SAHI's standard prediction; default
                scale 0 of ``cfg.MODEL.AUTOFOCUS.SCALES``, else of ``model.pipeline.scale_chain``.
            confidence_threshold: SAHI drops detections with a score below this.
            device: default the model's device, else ``cfg.MODEL.DEVICE``.
            category_mapping: {str(class id): name}; default "0".."K-1" to the dataset's names (or
                the ids) for ROI_HEADS.NUM_CLASSES classes.
        """
        _require_sahi()
        if cfg is None and model is None:
            raise ValueError("AutoFocusSahiModel needs a cfg or a model")
        self.cfg = cfg
        if first_scale is None:
            if cfg is not None and hasattr(cfg.MODEL, "AUTOFOCUS"):
                first_scale = cfg.MODEL.AUTOFOCUS.SCALES[0]
            elif model is not None and getattr(model, "pipeline", None) is not None:
                first_scale = model.pipeline.scale_chain.scales[0]
        self.first_scale = first_scale
        if model_path is None and cfg is not None:
            model_path = cfg.MODEL.WEIGHTS
        if device is None:
            device = str(model.device) if model is not None else cfg.MODEL.DEVICE
        super().__init__(
            model_path=model_path,
            model=model,
            device=device,
            confidence_threshold=confidence_threshold,
            category_mapping=category_mapping,
            load_at_init=load_at_init,
        )

    def set_device(self, device: Optional[str] = None) -> None:
        # SAHI's select_device sets CUDA_VISIBLE_DEVICES for the whole process; the device is known.
        self.device = torch.device(device or "cpu")

    def load_model(self) -> None:
        """Build the detector from ``self.cfg`` and load ``self.model_path`` (as train_net.py does)."""
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        if self.cfg is None:
            raise ValueError("AutoFocusSahiModel.load_model needs the cfg the detector is built from")
        if not self.model_path:
            raise ValueError(
                "MODEL.WEIGHTS is empty: the SAHI baseline must run on trained weights (give the "
                "checkpoint path, or pass the loaded model as model=...)"
            )
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = str(self.device)
        model = build_model(cfg)
        DetectionCheckpointer(model).load(self.model_path)
        self.set_model(model)

    def set_model(self, model: Any, **kwargs: Any) -> None:
        """Use ``model`` (already holding its weights) for every slice."""
        for attr in ("inference", "input_format", "device"):
            if not hasattr(model, attr):
                raise TypeError(f"{type(model).__name__} has no {attr!r}: expected a Detectron2 GeneralizedRCNN")
        if hasattr(model, "eval"):
            model.eval()
        self.model = SliceDetector(model, first_scale=self.first_scale)
        if self.category_mapping is None:
            self.category_mapping = self._default_category_mapping(model)
        self.category_names = list(self.category_mapping.values())

    def _default_category_mapping(self, model) -> Dict[str, str]:
        if self.cfg is not None:
            num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        else:
            num_classes = getattr(getattr(model, "roi_heads", None), "num_classes", None)
            if num_classes is None:
                raise ValueError("cannot tell the number of classes of the model: give category_mapping")
        names = [str(i) for i in range(num_classes)]
        if self.cfg is not None and len(self.cfg.DATASETS.TEST):
            from detectron2.data import MetadataCatalog

            thing_classes = MetadataCatalog.get(self.cfg.DATASETS.TEST[0]).get("thing_classes", None)
            if thing_classes is not None and len(thing_classes) == num_classes:
                names = list(thing_classes)
        return {str(i): name for i, name in enumerate(names)}

    @property
    def detector(self):
        """The Detectron2 model the slices run through."""
        return self.model.detector


class SahiSliceParams(NamedTuple):
    """``slice_size``: square slice side in ORIGINAL pixels; ``overlap``: SAHI's overlap ratio of
    neighbouring slices; ``zoom``: detector-input pixels per original pixel of a slice."""

    slice_size: int
    overlap: float
    zoom: float


def sahi_slice_params(cfg, image_hw: Tuple[int, int]) -> SahiSliceParams:
    """
    SAHI's slices matched to the finest scale's chips, for an ORIGINAL image of ``image_hw``.

    The finest scale (the image's zoom ``z`` of the last scale of :class:`ScaleChain`) processes
    FocusChips made from the FocusPixel map of the scale before it (zoom ``z_parent``); a chip is at
    least ``MIN_CHIP_SIZE`` (of that last transition) pixels of that parent scale, i.e.
    ``MIN_CHIP_SIZE / z_parent`` ORIGINAL pixels, seen at zoom ``z``. SAHI slices of that side, seen
    at the same zoom, are the smallest chip the finest scale processes, tiled over the whole image
    with ``GRID_OVERLAP`` (the overlap of our own ``grid`` policy).
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
    _require_sahi()
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
    slice_pixels = 0
    for box in boxes:
        oh, ow = zoomed_hw(box, zoom)
        slice_pixels += oh * ow
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
    the detector inputs (after the resize, before batch padding) of all passes; ``num_slices``; and
    ``slice_boxes``: the slices in original pixels."""

    instances: Instances
    pixels: int
    num_slices: int
    slice_pixels: int
    standard_pixels: int
    slice_boxes: List[Tuple[int, int, int, int]]


def _as_sahi_model(model_or_cfg, confidence: float) -> "AutoFocusSahiModel":
    if isinstance(model_or_cfg, AutoFocusSahiModel):
        return model_or_cfg
    if hasattr(model_or_cfg, "inference"):
        return AutoFocusSahiModel(model=model_or_cfg, confidence_threshold=confidence)
    return AutoFocusSahiModel(model_or_cfg, confidence_threshold=confidence)


def run_sahi(
    model_or_cfg,
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
        model_or_cfg: an :class:`AutoFocusSahiModel` (build it once for many images), a loaded
            Detectron2 model (wrapped as is), or our cfg (built and loaded from MODEL.WEIGHTS).
        image: (H, W, 3) uint8 array, the ORIGINAL image.
        slice_size: square slice side in ORIGINAL pixels (see :func:`sahi_slice_params`).
        overlap: overlap ratio of neighbouring slices (SAHI's overlap_height/width_ratio).
        zoom: every slice is resized by this before the detector (boxes are mapped back).
        confidence: SAHI's confidence threshold (scores below it are dropped).
        image_format: channel order of ``image``, "RGB" or "BGR"; default the model's INPUT.FORMAT
            (the array ``detection_utils.read_image(path, format=cfg.INPUT.FORMAT)`` returns).
        perform_standard_pred: SAHI's extra whole-image pass (at scale 0; only run, and counted,
            when there is more than one slice, as SAHI does). Default: SAHI's (True).
        postprocess_*, force_postprocess_type: SAHI's merge of the detections, with SAHI's defaults
            (note SAHI switches to NMS/IOU when ``confidence`` < 0.1 unless forced).

    Returns:
        :class:`SahiOutput`.
    """
    _require_sahi()
    sahi_model = _as_sahi_model(model_or_cfg, confidence)
    detector: SliceDetector = sahi_model.model
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = (image.shape, image.dtype) if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"run_sahi expects an (H, W, 3) uint8 image, got {desc}")
    fmt = image_format or detector.input_format
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {fmt!r}")
    rgb = np.ascontiguousarray(image if fmt == "RGB" else image[:, :, ::-1])  # SAHI's arrays are RGB
    h, w = rgb.shape[:2]
    slice_boxes = sahi_slice_boxes((h, w), slice_size, overlap)

    detector.zoom = float(zoom)
    detector.standard_hw = (h, w) if perform_standard_pred and len(slice_boxes) > 1 else None
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
        detector.standard_hw = None

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
    standard_pixels = sum(c.pixels for c in calls if c.kind == "standard")
    return SahiOutput(
        instances=instances,
        pixels=slice_pixels + standard_pixels,
        num_slices=len(slice_boxes),
        slice_pixels=slice_pixels,
        standard_pixels=standard_pixels,
        slice_boxes=slice_boxes,
    )
