"""Modeling: the AutoFocusRCNN and AutoFocusRetinaNet meta-architectures, the FocusPixel head and
loss (its labels: :mod:`autofocus_d2.structures.focus_labels`), and the ignore-aware RPN / ROI heads
of SNIPER chip training (registered on import)."""
from . import compact_resnet as _compact_resnet  # noqa: F401  (registers the compact backbones)
from .autofocus_rcnn import AutoFocusRCNN
from .autofocus_retinanet import AutoFocusRetinaNet
from .focus_detector import FocusDetectorMixin
from .pass_settings import capped_proposal_generator, pass_twin, raw_dense_detector, raw_roi_heads
from .focus_head import FOCUS_HEAD_REGISTRY, StandardFocusHead, build_focus_head, focus_pixel_loss
from .sniper_heads import (  # importing it registers the SNIPER RPN and ROI heads
    SNIPERROIHeadsMixin,
    SNIPERRPN,
    SNIPERRes5ROIHeads,
    SNIPERStandardROIHeads,
    ignored_overlap_mask,
    require_ignore_support,
    split_ignored,
)

__all__ = [
    "AutoFocusRCNN",
    "AutoFocusRetinaNet",
    "pass_twin",
    "capped_proposal_generator",
    "raw_roi_heads",
    "raw_dense_detector",
    "FocusDetectorMixin",
    "FOCUS_HEAD_REGISTRY",
    "StandardFocusHead",
    "build_focus_head",
    "focus_pixel_loss",
    "SNIPERRPN",
    "SNIPERROIHeadsMixin",
    "SNIPERStandardROIHeads",
    "SNIPERRes5ROIHeads",
    "ignored_overlap_mask",
    "require_ignore_support",
    "split_ignored",
]
