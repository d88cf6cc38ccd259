"""Deployment: the per-view detector traced to TorchScript, and the pipeline around it.

AutoFocus's pipeline is Python control flow (chips, crops, stacking); what costs is one detector pass
per view. :func:`export_focus_detector` traces that pass (backbone, RPN / ROI heads or dense head,
FocusPixel head) with ``torch.jit.trace`` over Detectron2's traceable modules (the pass returns plain
tensors, so Detectron2's ``TracingAdapter``, whose package needs caffe2 on 0.6, is not needed); the
result is saved with
``torch.jit.save`` and loaded without the plugin's model code. :class:`TracedFocusDetector` wraps the
loaded module in the pipeline's interface (:class:`autofocus_d2.inference.FocusDetector`), so the
same ``CoarseToFinePipeline`` runs around it. :func:`save_focus_detector` and
:func:`load_focus_detector` store and restore the traced module with the wrapper's settings.

``torch.export`` (which torch 2.14 recommends over TorchScript) cannot export this pass without
rewriting Detectron2's post-processing: its RPN proposal selection and ROI-head inference branch on
tensor values (``if not valid_mask.all()`` in ``find_top_rpn_proposals``, the box filtering by
``nonzero``), which ``torch.export`` refuses ("Could not guard on data-dependent expression";
docs/deployment.md gives the full error). Tracing records them as the sample took them, which is
what ``torch.jit.trace``'s TracerWarnings say; :func:`export_focus_detector` silences those
warnings and TorchScript's deprecation notices, and only there.
"""
import json
import warnings
from contextlib import contextmanager
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from .checkpoint import load_weights
from .model_metadata import class_names, load_tool_config

__all__ = [
    "EXPORT_OPTS",
    "TracedFocusDetector",
    "export_focus_detector",
    "export_from_weights",
    "exportable_model",
    "load_focus_detector",
    "save_focus_detector",
]

# What a traced graph needs (one proposal budget, one view at a time); exportable_model's defaults.
EXPORT_OPTS = ("MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX", "0", "MODEL.AUTOFOCUS.CHIP_BATCH_SIZE", "1")

# Name of the settings stored beside the graph in a saved file (torch.jit extra files).
_SETTINGS_FILE = "autofocus_settings.json"


@contextmanager
def _quiet_torchscript():
    """TorchScript's TracerWarnings (the data-dependent branches of Detectron2's post-processing,
    recorded as the sample took them: known and expected) and its deprecation notices, silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*deprecated.*torch\.export", category=FutureWarning)
        yield


def _check_sample_image(sample_image) -> None:
    if not isinstance(sample_image, torch.Tensor) or sample_image.dim() != 3:
        shape = getattr(sample_image, "shape", None)
        raise TypeError(
            f"sample_image must be a (C, H, W) torch.Tensor in the model's input format, got "
            f"{type(sample_image).__name__}{'' if shape is None else f' of shape {tuple(shape)}'}. Fix: "
            "torch.as_tensor(image.transpose(2, 0, 1).copy()).float() for an (H, W, C) array as "
            "detectron2.data.detection_utils.read_image returns it"
        )


def _check_budget(pipeline) -> None:
    if pipeline is not None and getattr(pipeline, "proposals_per_mpix", 0) > 0:
        raise ValueError(
            "a traced detector has one proposal budget; MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX > 0 asks "
            "for one per view size. Export with MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX 0"
        )


def export_focus_detector(model: nn.Module, sample_image: torch.Tensor,
                          thing_classes: Optional[Sequence[str]] = None) -> torch.jit.ScriptModule:
    """
    Trace one view's detector pass of an AutoFocus model (eval mode, any device).

    Args:
        model: an AutoFocus meta-architecture (``normalize``/``detect``, FocusDetector interface).
            Its pipeline's view mode is traced in: raw per-view detections (score >= the
            pipeline's ``raw_score_thresh``) or the detector's own filtered ones.
        sample_image: (C, H, W) float image in the model's input format, on the model's device;
            traced shapes generalise to other sizes (Detectron2's traceable ops).
        thing_classes: the class names, kept in the settings (saved by :func:`save_focus_detector`,
            :attr:`TracedFocusDetector.thing_classes` after loading); None: not known.

    Returns:
        a ScriptModule: (C, h, w) float image -> (boxes (N, 4) XYXY in the image's frame, scores (N,),
        classes (N,), FocusPixel probabilities (Hf, Wf) on the padded grid of ``model.focus_stride``).
    """
    _check_sample_image(sample_image)
    if model.training:
        raise ValueError("export_focus_detector needs the model in eval mode (model.eval())")
    pipeline = getattr(model, "pipeline", None)
    _check_budget(pipeline)
    raw_thresh = getattr(pipeline, "raw_score_thresh", None)

    with torch.no_grad(), _quiet_torchscript():
        traced = torch.jit.trace(_OneView(model, raw_thresh), (sample_image,), check_trace=False)
    # What the wrapper needs besides the traced graph, kept with the module (saved by
    # save_focus_detector).
    traced.focus_stride = int(model.focus_stride)  # type: ignore[attr-defined]
    traced.autofocus_settings = {  # type: ignore[attr-defined]
        "focus_stride": int(model.focus_stride),
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten().tolist()],
        "size_divisibility": int(model.backbone.size_divisibility),
        "raw_score_thresh": raw_thresh,
        "thing_classes": None if thing_classes is None else [str(c) for c in thing_classes],
    }
    return traced


def exportable_model(weights: str, opts: Sequence[str] = (),
                     config_file: Optional[str] = None) -> Tuple[nn.Module, CfgNode]:
    """
    The model of a checkpoint, ready for :func:`export_focus_detector` (eval mode, weights loaded),
    and its config.

    Args:
        weights: a checkpoint; without ``config_file`` it must carry the config record that
            ``train_net.py`` writes (:func:`~autofocus_d2.model_metadata.load_tool_config`).
        opts: KEY VALUE overrides (e.g. ``MODEL.DEVICE cpu``), applied after :data:`EXPORT_OPTS`
            (``MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX 0``, ``CHIP_BATCH_SIZE 1``).
        config_file: an explicit config; it must agree with the weights' record.

    Returns:
        (model, cfg); ``cfg`` builds the pipeline around the traced detector
        (``build_autofocus_pipeline(cfg)``), ``class_names(cfg)`` gives the weights' class names.
    """
    cfg = load_tool_config(config_file, [*EXPORT_OPTS, *opts], weights)
    model = build_model(cfg).eval()
    load_weights(model, cfg.MODEL.WEIGHTS)
    return model, cfg


def export_from_weights(weights: str, sample_image: torch.Tensor, opts: Sequence[str] = (),
                        config_file: Optional[str] = None) -> Tuple[torch.jit.ScriptModule, CfgNode]:
    """
    :func:`export_focus_detector` of a checkpoint alone (:func:`exportable_model`), the class names
    recorded in the checkpoint kept in the settings.

    Args:
        weights, opts, config_file: as :func:`exportable_model`.
        sample_image: (C, H, W) float image in the model's input format (``cfg.INPUT.FORMAT``);
            moved to ``MODEL.DEVICE``.

    Returns:
        (traced module, its config).
    """
    _check_sample_image(sample_image)
    model, cfg = exportable_model(weights, opts, config_file)
    traced = export_focus_detector(model, sample_image.to(cfg.MODEL.DEVICE), class_names(cfg))
    return traced, cfg


def save_focus_detector(traced: torch.jit.ScriptModule, path: str) -> None:
    """Save a module of :func:`export_focus_detector` with its settings (``torch.jit.save``)."""
    settings = getattr(traced, "autofocus_settings", None)
    if settings is None:
        raise ValueError("save_focus_detector saves a module made by export_focus_detector")
    with _quiet_torchscript():
        torch.jit.save(traced, path, _extra_files={_SETTINGS_FILE: json.dumps(settings)})


def load_focus_detector(path: str, device: str = "cpu") -> "TracedFocusDetector":
    """The file of :func:`save_focus_detector` behind the pipeline's interface, on ``device``."""
    extra = {_SETTINGS_FILE: ""}
    with _quiet_torchscript():
        traced = torch.jit.load(path, map_location=device, _extra_files=extra)
    if not extra[_SETTINGS_FILE]:
        raise ValueError(f"{path}: no {_SETTINGS_FILE} in the file; save it with save_focus_detector")
    return TracedFocusDetector(traced, device=device, **json.loads(extra[_SETTINGS_FILE]))


class _OneView(nn.Module):
    """One view through ``model.detect``, as plain tensors (what torch.jit.trace records)."""

    def __init__(self, model: nn.Module, raw_score_thresh: Optional[float]):
        super().__init__()
        self.model = model
        self.raw_score_thresh = raw_score_thresh

    def forward(self, image: torch.Tensor):
        instances, focus = self.model.detect(
            self.model.normalize([image]), with_focus=True, raw_score_thresh=self.raw_score_thresh
        )
        inst = instances[0]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes, focus[0]


class TracedFocusDetector:
    """
    The pipeline's interface over a traced detector (from :func:`export_focus_detector`, or
    ``torch.jit.load`` of its saved file): ``CoarseToFinePipeline(...)(TracedFocusDetector(...), inputs)``
    runs AutoFocus with it. Views are run one at a time (the traced graph takes one image).
    """

    def __init__(
        self,
        traced: torch.jit.ScriptModule,
        *,
        focus_stride: int,
        pixel_mean: Sequence[float],
        size_divisibility: int,
        raw_score_thresh: Optional[float],
        thing_classes: Optional[Sequence[str]] = None,
        device: str = "cpu",
    ):
        """
        Args:
            traced: the traced one-view detector (normalises its input itself).
            focus_stride: stride of its FocusPixel maps, in view pixels.
            pixel_mean: MODEL.PIXEL_MEAN (its length is the input channels).
            size_divisibility: the backbone's, to report the padded focus grid like the eager model.
            raw_score_thresh: the pipeline's per-view raw threshold the module was traced with
                (None: filtered view detections); the pipeline must ask for the same.
            thing_classes: the class names (index = ``pred_classes``), None when not known.
        """
        self.traced = traced
        self.focus_stride = int(focus_stride)
        self.input_channels = len(pixel_mean)
        self.size_divisibility = int(size_divisibility)
        self.raw_score_thresh = raw_score_thresh
        self.thing_classes = None if thing_classes is None else list(thing_classes)
        self.device = torch.device(device)

    def normalize(self, images: Sequence[torch.Tensor]) -> ImageList:
        """The traced module normalises by itself: here the views are only batched (padded)."""
        return ImageList.from_tensors(list(images), self.size_divisibility)

    def detect(
        self,
        images: ImageList,
        with_focus: bool = True,
        max_proposals: Optional[int] = None,
        raw_score_thresh: Optional[float] = None,
    ) -> Tuple[List[Instances], Optional[torch.Tensor]]:
        if max_proposals is not None:
            raise ValueError("a traced detector has a fixed proposal budget (PROPOSALS_PER_MPIX must be 0)")
        if raw_score_thresh != self.raw_score_thresh:
            raise ValueError(
                f"the detector was traced with raw_score_thresh={self.raw_score_thresh}, the pipeline "
                f"asks for {raw_score_thresh}: export again with the pipeline's MODEL.AUTOFOCUS settings"
            )
        results, maps = [], []
        for i, (h, w) in enumerate(images.image_sizes):
            boxes, scores, classes, focus = self.traced(images.tensor[i, :, :h, :w])
            inst = Instances((h, w))
            inst.pred_boxes, inst.scores, inst.pred_classes = Boxes(boxes), scores, classes
            results.append(inst)
            maps.append(focus)
        if not with_focus:
            return results, None
        hf = max(m.shape[0] for m in maps)
        wf = max(m.shape[1] for m in maps)
        padded = maps[0].new_zeros((len(maps), hf, wf))
        for i, m in enumerate(maps):
            padded[i, : m.shape[0], : m.shape[1]] = m
        return results, padded
