"""Deployment: the per-view detector traced to TorchScript, and the pipeline around it.

AutoFocus's pipeline is Python control flow (chips, crops, stacking); what costs is one detector pass
per view. :func:`export_focus_detector` traces that pass (backbone, RPN / ROI heads or dense head,
FocusPixel head) with ``torch.jit.trace`` over Detectron2's traceable modules (the pass returns plain
tensors, so Detectron2's ``TracingAdapter``, whose package needs caffe2 on 0.6, is not needed); the
result is saved with
``torch.jit.save`` and loaded without the plugin's model code. :class:`TracedFocusDetector` wraps the
loaded module in the pipeline's interface (:class:`autofocus_d2.inference.FocusDetector`), so the
same ``CoarseToFinePipeline`` runs around it.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

__all__ = ["export_focus_detector", "TracedFocusDetector"]


def _check_budget(pipeline) -> None:
    if pipeline is not None and getattr(pipeline, "proposals_per_mpix", 0) > 0:
        raise ValueError(
            "a traced detector has one proposal budget; MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX > 0 asks "
            "for one per view size. Export with MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX 0"
        )


def export_focus_detector(model: nn.Module, sample_image: torch.Tensor) -> torch.jit.ScriptModule:
    """
    Trace one view's detector pass of an AutoFocus model (eval mode, any device).

    Args:
        model: an AutoFocus meta-architecture (``normalize``/``detect``, FocusDetector interface).
            Its pipeline's view mode is traced in: raw per-view detections (score >= the
            pipeline's ``raw_score_thresh``) or the detector's own filtered ones.
        sample_image: (C, H, W) float image in the model's input format, on the model's device;
            traced shapes generalise to other sizes (Detectron2's traceable ops).

    Returns:
        a ScriptModule: (C, h, w) float image -> (boxes (N, 4) XYXY in the image's frame, scores (N,),
        classes (N,), FocusPixel probabilities (Hf, Wf) on the padded grid of ``model.focus_stride``).
    """
    if model.training:
        raise ValueError("export_focus_detector needs the model in eval mode (model.eval())")
    pipeline = getattr(model, "pipeline", None)
    _check_budget(pipeline)
    raw_thresh = getattr(pipeline, "raw_score_thresh", None)

    with torch.no_grad():
        traced = torch.jit.trace(_OneView(model, raw_thresh), (sample_image,), check_trace=False)
    # What the wrapper needs besides the traced graph, stored in the module itself.
    traced.focus_stride = int(model.focus_stride)  # type: ignore[attr-defined]
    return traced


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
        """
        self.traced = traced
        self.focus_stride = int(focus_stride)
        self.input_channels = len(pixel_mean)
        self.size_divisibility = int(size_divisibility)
        self.raw_score_thresh = raw_score_thresh
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
