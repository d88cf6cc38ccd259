"""Modeling: the AutoFocusRCNN meta-architecture, the FocusPixel head, labels and loss."""
from . import compact_resnet as _compact_resnet  # noqa: F401  (registers the compact backbones)
from .autofocus_rcnn import AutoFocusRCNN
from .focus_head import FOCUS_HEAD_REGISTRY, StandardFocusHead, build_focus_head, focus_pixel_loss
from .focus_labels import focus_pixel_targets
from . import sniper_heads as _sniper_heads  # noqa: F401  (registers the SNIPER RPN and ROI heads)
from .sniper_heads import (
    SNIPERROIHeadsMixin,
    SNIPERRPN,
    SNIPERRes5ROIHeads,
    SNIPERStandardROIHeads,
    ignored_overlap_mask,
    split_ignored,
)

__all__ = [
    "AutoFocusRCNN",
    "FOCUS_HEAD_REGISTRY",
    "StandardFocusHead",
    "build_focus_head",
    "focus_pixel_loss",
    "focus_pixel_targets",
    "SNIPERRPN",
    "SNIPERROIHeadsMixin",
    "SNIPERStandardROIHeads",
    "SNIPERRes5ROIHeads",
    "ignored_overlap_mask",
    "split_ignored",
]
