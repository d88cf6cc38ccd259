"""Use any autofocus-d2 model from SAHI (https://github.com/obss/sahi), through SAHI's own API.

SAHI's sliced inference (``sahi.predict.get_sliced_prediction``) cuts the original image into
overlapping square slices, runs a detector on every slice (and, by default, once more on the whole
image: its "standard prediction"), shifts the slice detections into the original frame and merges
them. :class:`AutoFocusSahiModel` is the SAHI ``DetectionModel`` that runs an autofocus-d2 model
there: a subclass of SAHI's own Detectron2 wrapper (``sahi.models.detectron2.Detectron2DetectionModel``)
whose inference and conversion to SAHI's ObjectPredictions are inherited unchanged; only how it
builds the model and what it calls per array are replaced::

    from sahi.predict import get_sliced_prediction
    from autofocus_d2.integrations.sahi import AutoFocusSahiModel

    model = AutoFocusSahiModel.from_weights("output/demo/train/model_final.pth")
    result = get_sliced_prediction("image.png", model, slice_height=512, slice_width=512)

  (``from_weights``: the config and class names recorded in a checkpoint of ``train_net.py``;
  ``from_config_file(config_file, weights)`` with an explicit config, which must agree with them.)

* **The model.** Built from our config (``get_cfg`` + ``add_autofocus_config`` + the file, so the
  MODEL.AUTOFOCUS keys and the compact backbone resolve; SAHI's own ``load_model`` cannot) with
  ``build_model`` + :func:`~autofocus_d2.checkpoint.load_weights` (weights that do not fit the
  model are an error, not skipped tensors) as ``train_net.py`` does, or handed over already built
  (``model=``), used as the same object. Each array SAHI hands over runs through the model's
  ``inference`` -- GeneralizedRCNN's plain single pass, which the AutoFocus meta-architectures do
  not override: the per-view detector of the pipeline (backbone, RPN, ROI heads), with the
  FocusPixel head idle.
* **The views.** An array is resized by ``slice_zoom`` (1 = as given, the original resolution)
  exactly as the AutoFocus pipeline resizes a chip (``views.crop_and_resize`` to
  ``views.zoomed_hw``). An array of the size set by :meth:`AutoFocusSahiModel.set_full_image_size`
  (SAHI's standard prediction of that image) is resized to ``first_scale`` instead: scale 0 of
  ``MODEL.AUTOFOCUS.SCALES``, the size at which the model sees whole images. Boxes come back in
  the frame of the array (Detectron2's ``detector_postprocess``); SAHI adds the slice offsets.
* **Channel order.** SAHI's arrays are RGB; SAHI's wrapper flips them to BGR when the model's
  INPUT.FORMAT is "BGR".
* **Dense scenes.** A pass keeps at most ``TEST.DETECTIONS_PER_IMAGE`` detections; the first pass
  that reaches that cap (with scores at least the test threshold) logs the tools' warning once
  (:class:`~autofocus_d2.evaluation.detection_cap.DetectionCapCounter`, here counting passes);
  ``detection_model.model.cap_counter.message()`` gives the totals so far.

SAHI is an optional dependency (``pip install -e .[bench]`` or ``pip install sahi``); without it this
module imports, :func:`sahi_available` says why not, and building a model raises ImportError.
"""
import logging
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.structures import Instances

from ..evaluation.detection_cap import DetectionCapCounter, detection_cap, score_floor
from ..structures.scale_chain import scale_zoom
from ..structures.views import crop_and_resize, zoomed_hw

__all__ = ["AutoFocusSahiModel", "DetectorCall", "SliceDetector", "require_sahi", "sahi_available"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install sahi (or pip install -e .[bench] in autofocus-d2)"

try:
    from sahi.models.detectron2 import Detectron2DetectionModel

    _SAHI_ERROR: Optional[str] = None
except ImportError as e:  # optional dependency
    _SAHI_ERROR = f"sahi is not installed: {_INSTALL_HINT} ({e})"

    class Detectron2DetectionModel:  # type: ignore[no-redef]
        """Stand-in base class so this module imports without sahi; instantiating it raises."""

        def __init__(self, *args, **kwargs):
            raise ImportError(_SAHI_ERROR)


def sahi_available() -> Tuple[bool, str]:
    """(True, "") when sahi and its Detectron2 wrapper import; else (False, the reason)."""
    return (_SAHI_ERROR is None, _SAHI_ERROR or "")


def require_sahi() -> None:
    """Raise ImportError with the install hint when sahi is absent."""
    if _SAHI_ERROR is not None:
        raise ImportError(_SAHI_ERROR)


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class DetectorCall(NamedTuple):
    """One detector pass: ``kind`` "slice" or "full" (SAHI's standard prediction), the (h, w) of the
    array SAHI handed over (its own frame), the (h, w) of the detector input it was resized to, and
    the wall time of the pass in seconds (synchronised on CUDA)."""

    kind: str
    image_hw: Tuple[int, int]
    input_hw: Tuple[int, int]
    seconds: float = 0.0

    @property
    def pixels(self) -> int:
        return self.input_hw[0] * self.input_hw[1]


class SliceDetector:
    """
    What SAHI's Detectron2 wrapper calls in place of Detectron2's ``DefaultPredictor`` (its
    ``self.model``): ``input_format`` and ``self(image) -> {"instances": Instances}``.

    ``image`` is an (h, w, 3) uint8 array in ``input_format`` channel order. It is resized to
    ``zoomed_hw(image, zoom)`` -- or, when its size is ``full_image_hw``, to ``first_scale`` -- and
    run through ``detector.inference``. The returned Instances are in the frame of ``image``, on
    the CPU. Every pass is appended to ``calls``.
    """

    def __init__(self, detector, *, first_scale: Optional[Sequence[float]] = None, zoom: float = 1.0,
                 cap_counter: Optional[DetectionCapCounter] = None):
        """
        Args:
            detector: a GeneralizedRCNN (AutoFocusRCNN included) in eval mode, or any object with
                ``inference(batched_inputs)``, ``input_format`` and ``device`` alike.
            first_scale: (shorter side, longer-side cap) in pixels of the whole-image pass (the rule
                of :class:`autofocus_d2.structures.ScaleChain`; -1 = no constraint).
            zoom: detector-input pixels per pixel of a slice.
            cap_counter: counts the passes that reach the detection cap and warns once (None: no
                count).
        """
        if detector.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"INPUT.FORMAT {detector.input_format!r}: SAHI's Detectron2 wrapper feeds RGB or BGR "
                "arrays only"
            )
        if zoom <= 0:
            raise ValueError(f"slice zoom must be > 0, got {zoom}")
        self.detector = detector
        self.input_format = detector.input_format
        self.first_scale = None if first_scale is None else tuple(float(s) for s in first_scale)
        self.zoom = float(zoom)
        self.full_image_hw: Optional[Tuple[int, int]] = None
        self.calls: List[DetectorCall] = []
        self.cap_counter = cap_counter

    def input_hw(self, image_hw: Tuple[int, int]) -> Tuple[Tuple[int, int], str]:
        """(detector input (h, w), kind) of an array of size ``image_hw`` handed over by SAHI."""
        h, w = image_hw
        if self.full_image_hw is not None and tuple(image_hw) == tuple(self.full_image_hw):
            if self.first_scale is None:
                raise ValueError(
                    "the whole-image pass needs the whole-image size: give first_scale "
                    "(MODEL.AUTOFOCUS.SCALES[0]) or do not set a full image size"
                )
            return zoomed_hw((0, 0, w, h), scale_zoom((h, w), *self.first_scale)), "full"
        return zoomed_hw((0, 0, w, h), self.zoom), "slice"

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Dict[str, Instances]:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            desc = image.shape if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"expected an (h, w, 3) image from SAHI, got {desc}")
        h, w = image.shape[:2]
        out_hw, kind = self.input_hw((h, w))
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        tensor = tensor.to(self.detector.device).float()
        # The pipeline's own crop/resize: a slice at zoom z is what a chip at that zoom would be.
        resized = crop_and_resize(tensor, (0, 0, w, h), out_hw)
        _sync(self.detector.device)
        start = time.perf_counter()
        # height/width: detector_postprocess maps boxes from the detector input to the array frame.
        outputs = self.detector.inference([{"image": resized, "height": h, "width": w}])
        _sync(self.detector.device)
        seconds = time.perf_counter() - start
        self.calls.append(DetectorCall(kind, (h, w), tuple(out_hw), seconds))
        instances = outputs[0]["instances"].to("cpu")
        if self.cap_counter is not None:
            self.cap_counter.add(instances.scores, instances.pred_boxes.tensor)
            self.cap_counter.warn(logger)
        return {"instances": instances}


class AutoFocusSahiModel(Detectron2DetectionModel):
    """
    SAHI's Detectron2 wrapper on an autofocus-d2 model. Its ``model`` is a :class:`SliceDetector`
    around the Detectron2 model; the RGB->BGR flip, score filtering and conversion to SAHI's
    ObjectPredictions are SAHI's inherited code. Category ids are the model's contiguous class ids.
    Pass it wherever SAHI takes a ``detection_model`` (``get_sliced_prediction``, ``get_prediction``).
    """

    def __init__(
        self,
        cfg=None,
        *,
        model=None,
        model_path: Optional[str] = None,
        first_scale: Optional[Sequence[float]] = None,
        slice_zoom: float = 1.0,
        confidence_threshold: float = 0.05,
        device: Optional[str] = None,
        category_mapping: Optional[Dict[str, str]] = None,
        load_at_init: bool = True,
    ):
        """
        Args:
            cfg: our Detectron2 config (with the autofocus keys). Without ``model`` the model is
                built from it (``build_model``) and loaded from ``model_path`` (default
                ``cfg.MODEL.WEIGHTS``, which must then be set).
            model: an already loaded model (AutoFocusRCNN / GeneralizedRCNN), used as is (set to
                eval mode): the same object, hence the same weights, as the caller's.
            first_scale: (shorter side, longer-side cap) in pixels of the whole-image pass; default
                scale 0 of ``cfg.MODEL.AUTOFOCUS.SCALES``.
            slice_zoom: detector-input pixels per pixel of a slice (1: as SAHI gives it).
            confidence_threshold: SAHI drops detections with a score below this.
            device: default the model's device, else ``cfg.MODEL.DEVICE``.
            category_mapping: {str(class id): name}; default the names of ``DATASETS.TEST[0]``
                (else "0".."K-1") for the config's class count (ROI_HEADS / RETINANET.NUM_CLASSES).
        """
        require_sahi()
        if cfg is None and model is None:
            raise ValueError("AutoFocusSahiModel needs a cfg or a model")
        self.cfg = cfg
        if first_scale is None and cfg is not None and hasattr(cfg.MODEL, "AUTOFOCUS"):
            first_scale = cfg.MODEL.AUTOFOCUS.SCALES[0]
        self.first_scale = first_scale
        self.slice_zoom = float(slice_zoom)
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

    @classmethod
    def from_config_file(
        cls, config_file: Optional[str], weights: str, *, opts: Sequence[str] = (), **kwargs: Any
    ) -> "AutoFocusSahiModel":
        """Build and load the model of an autofocus-d2 config file (``opts``: KEY VALUE overrides)
        with the checkpoint ``weights``; ``kwargs`` as for the constructor. ``config_file`` None:
        the config recorded in the weights; a config that contradicts the weights' record (class
        count, meta-architecture, class names) raises ValueError naming the key
        (:func:`~autofocus_d2.model_metadata.load_tool_config`)."""
        from ..model_metadata import load_tool_config

        return cls(load_tool_config(config_file, opts, weights), **kwargs)

    @classmethod
    def from_weights(cls, weights: str, *, opts: Sequence[str] = (), **kwargs: Any) -> "AutoFocusSahiModel":
        """The model of a checkpoint written by ``train_net.py``, from the config and class names it
        records (``opts``: KEY VALUE overrides; ``kwargs`` as for the constructor)."""
        return cls.from_config_file(None, weights, opts=opts, **kwargs)

    def set_device(self, device: Optional[str] = None) -> None:
        # SAHI's select_device sets CUDA_VISIBLE_DEVICES for the whole process; the device is known.
        self.device = torch.device(device or "cpu")

    def load_model(self) -> None:
        """Build the model from ``self.cfg`` and load ``self.model_path`` (as train_net.py does)."""
        from detectron2.modeling import build_model

        from ..checkpoint import load_weights

        if self.cfg is None:
            raise ValueError("AutoFocusSahiModel.load_model needs the cfg the model is built from")
        if not self.model_path:
            raise ValueError(
                "MODEL.WEIGHTS is empty: give the checkpoint path, or pass the loaded model as model=..."
            )
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = str(self.device)
        model = build_model(cfg)
        load_weights(model, self.model_path)
        self.set_model(model)

    def set_model(self, model: Any, **kwargs: Any) -> None:
        """Use ``model`` (already holding its weights) for every array SAHI hands over."""
        for attr in ("inference", "input_format", "device"):
            if not hasattr(model, attr):
                raise TypeError(f"{type(model).__name__} has no {attr!r}: expected a Detectron2 GeneralizedRCNN")
        if hasattr(model, "eval"):
            model.eval()
        counter = None
        if self.cfg is not None:  # the detector's per-pass cap and score threshold
            counter = DetectionCapCounter(detection_cap(self.cfg), "SAHI detector passes", score_floor(self.cfg))
        self.model = SliceDetector(model, first_scale=self.first_scale, zoom=self.slice_zoom,
                                   cap_counter=counter)
        if self.category_mapping is None:
            self.category_mapping = self.default_category_mapping(model)
        self.category_names = list(self.category_mapping.values())

    def default_category_mapping(self, model) -> Dict[str, str]:
        """{str(class id): name} for the model's classes (see the constructor's category_mapping)."""
        if self.cfg is not None:
            from ..model_metadata import num_classes_key

            num_classes = self.cfg.MODEL[num_classes_key(self.cfg).split(".")[1]].NUM_CLASSES
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

    def set_full_image_size(self, image_hw: Optional[Tuple[int, int]]) -> None:
        """Run an array of exactly ``image_hw`` (h, w) -- SAHI's standard prediction of an image of
        that size -- at ``first_scale`` instead of ``slice_zoom``; None: every array at ``slice_zoom``.
        Only set it when the image needs more than one slice, so that no slice has that size."""
        self.model.full_image_hw = None if image_hw is None else (int(image_hw[0]), int(image_hw[1]))

    @property
    def detector(self):
        """The Detectron2 model the arrays run through."""
        return self.model.detector
