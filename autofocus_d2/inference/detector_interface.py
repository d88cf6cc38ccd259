"""The narrow interface between the AutoFocus pipeline and a detector.

The pipeline (``autofocus_d2.inference.pipeline``) never touches a model's internals: it needs only
what :class:`FocusDetector` lists. ``AutoFocusRCNN`` and ``AutoFocusRetinaNet`` provide it through
``autofocus_d2.modeling.FocusDetectorMixin``; a test stand-in or an exported module can provide it
too (see ``autofocus_d2.export``).
"""
from typing import List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from detectron2.structures import ImageList, Instances

__all__ = ["FocusDetector", "require_focus_detector"]


@runtime_checkable
class FocusDetector(Protocol):
    """What the pipeline calls on a model.

    Attributes:
        device: where the model's tensors live; the pipeline moves the input images there.
        input_channels: channels of an input image (3 for BGR/RGB).
        focus_stride: stride, in pixels of the view, of the FocusPixel maps ``detect`` returns.
        size_divisibility: :meth:`normalize` pads a batch to a multiple of it (the backbone's);
            the pipeline groups views into batches knowing what padding costs.
    """

    device: torch.device
    input_channels: int
    focus_stride: int
    size_divisibility: int

    def normalize(self, images: Sequence[torch.Tensor]) -> ImageList:
        """Float images (C, h, w) on ``device``, in the model's input format and pixel range ->
        one normalized batch padded to the backbone's size divisibility."""

    def detect(
        self,
        images: ImageList,
        with_focus: bool = True,
        max_proposals: Optional[int] = None,
        raw_score_thresh: Optional[float] = None,
    ) -> Tuple[List[Instances], Optional[torch.Tensor]]:
        """One detector pass over a batch from :meth:`normalize`.

        Returns per-image Instances (``pred_boxes``, ``scores``, ``pred_classes`` and any other
        per-instance field the heads predict) in the frame of each unpadded view, and the
        FocusPixel probabilities (B, Hf, Wf) on the padded grid of stride ``focus_stride`` (None
        when ``with_focus`` is False). ``max_proposals`` caps a proposal-based detector's test-time
        proposals; ``raw_score_thresh`` asks for raw detections (no per-view NMS / top-k, every
        class score >= the threshold)."""


def require_focus_detector(model) -> None:
    """Raise TypeError naming what is missing when ``model`` does not provide :class:`FocusDetector`."""
    missing = [name for name in ("device", "input_channels", "focus_stride", "size_divisibility",
                                 "normalize", "detect")
               if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} cannot run the AutoFocus pipeline: it lacks {missing} "
            "(see autofocus_d2.inference.FocusDetector; AutoFocusRCNN and AutoFocusRetinaNet provide them)"
        )
