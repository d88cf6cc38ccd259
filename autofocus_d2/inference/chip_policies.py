"""Chip policies: which regions of an image are processed at each finer scale.

Every policy runs through the same pipeline and the same focus stacking, so comparing policies on
one set of weights is fair. Policies are picked by ``MODEL.AUTOFOCUS.CHIP_POLICY``.
"""
import logging
from abc import ABC, abstractmethod
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry

from ..config import lookup_registry, per_transition
from .focus_chips import generate_focus_chips, merge_overlapping_boxes
from .views import View, snap_to_pixels, tile_box

__all__ = [
    "CHIP_POLICY_REGISTRY",
    "ChipPolicy",
    "AutoFocusChipPolicy",
    "PyramidChipPolicy",
    "SingleScaleChipPolicy",
    "GridChipPolicy",
    "build_chip_policy",
]

logger = logging.getLogger(__name__)

CHIP_POLICY_REGISTRY = Registry("CHIP_POLICY")
CHIP_POLICY_REGISTRY.__doc__ = """
Registry for chip policies, built as ``cls(cfg)``. A policy's ``chips(...)`` returns the boxes of
one image to process at the next finer scale, in ORIGINAL image pixels.
"""


class ChipPolicy(ABC):
    """Base class. ``needs_focus``: whether the pipeline must compute FocusPixel maps."""

    needs_focus: bool = False

    def num_scales(self, num_configured: int) -> int:
        """How many of the configured scales this policy processes."""
        return num_configured

    @abstractmethod
    def chips(
        self,
        *,
        next_scale: int,
        zoom: float,
        image_hw: Tuple[int, int],
        parents: Sequence[View],
        focus_maps: Sequence[Optional[torch.Tensor]],
        focus_stride: int,
    ) -> torch.Tensor:
        """
        Args:
            next_scale: index (>= 1) of the scale the chips are for; ``zoom`` its zoom factor
                relative to the original image.
            image_hw: (H, W) of the original image.
            parents: the views of this image processed at ``next_scale - 1``.
            focus_maps: per parent, its FocusPixel probabilities (h, w) at ``focus_stride`` in
                the parent view's frame (None when the policy does not need focus).

        Returns:
            (N, 4) float XYXY chips in integer pixels of the original image, on the device of
            the maps (CPU when there are none).
        """


@CHIP_POLICY_REGISTRY.register()
class AutoFocusChipPolicy(ChipPolicy):
    """FocusChips (paper Algorithm 1) from each parent's FocusPixel map, merged across parents and
    capped at ``max_chips`` per image (the chips with the most FocusPixel mass are kept)."""

    needs_focus = True

    @configurable
    def __init__(
        self,
        *,
        thresholds: Sequence[float],
        dilations: Sequence[int],
        min_sizes: Sequence[float],
        max_chips: int,
    ):
        """thresholds, dilations, min_sizes: one per scale transition (see config.py)."""
        self.thresholds = list(thresholds)
        self.dilations = list(dilations)
        self.min_sizes = list(min_sizes)
        self.max_chips = max_chips

    @classmethod
    def from_config(cls, cfg):
        af = cfg.MODEL.AUTOFOCUS
        n = max(1, len(af.SCALES) - 1)
        return {
            "thresholds": per_transition(af.FOCUS_THRESHOLD, n, "MODEL.AUTOFOCUS.FOCUS_THRESHOLD"),
            "dilations": per_transition(af.DILATION, n, "MODEL.AUTOFOCUS.DILATION"),
            "min_sizes": per_transition(af.MIN_CHIP_SIZE, n, "MODEL.AUTOFOCUS.MIN_CHIP_SIZE"),
            "max_chips": af.MAX_CHIPS_PER_IMAGE,
        }

    def chips(self, *, next_scale, zoom, image_hw, parents, focus_maps, focus_stride):
        t = next_scale - 1
        threshold = self.thresholds[t]
        found, points, weights = [], [], []
        for parent, prob in zip(parents, focus_maps):
            if not bool(torch.isfinite(prob).all()):
                raise ValueError(
                    f"the FocusPixel map of image {parent.image_index} at scale {parent.scale} "
                    f"(view {parent.box}) contains NaN or inf: the focus head produced non-finite "
                    "probabilities (check the weights and the input image)"
                )
            chips = generate_focus_chips(
                prob,
                stride=focus_stride,
                threshold=threshold,
                dilation=self.dilations[t],
                min_size=self.min_sizes[t],
                image_hw=parent.out_hw,
            )
            found.append(parent.to_original(chips))
            # Focus cells (centres, original frame) with their probability: the mass that
            # ranks chips when more than max_chips are found.
            rows, cols = (prob[: -(-parent.out_hw[0] // focus_stride), : -(-parent.out_hw[1] // focus_stride)]
                          >= threshold).nonzero(as_tuple=True)
            centres = torch.stack([cols, rows, cols, rows], dim=1).float() * focus_stride + focus_stride / 2
            points.append(parent.to_original(centres)[:, :2])
            weights.append(prob[rows, cols])
        device = focus_maps[0].device if len(focus_maps) else torch.device("cpu")
        if not found:
            return torch.zeros((0, 4), device=device)
        chips = merge_overlapping_boxes(snap_to_pixels(torch.cat(found), image_hw))
        if len(chips) > self.max_chips:
            pts, w = torch.cat(points), torch.cat(weights)
            inside = ((pts[None] >= chips[:, None, :2]) & (pts[None] < chips[:, None, 2:])).all(dim=2)
            mass = (inside.float() * w[None]).sum(dim=1)
            order = torch.argsort(mass, descending=True, stable=True)
            logger.warning(
                f"{len(chips)} FocusChips for scale {next_scale} of an image of size {image_hw}; "
                f"keeping the {self.max_chips} with the most focus mass "
                "(MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE)"
            )
            chips = chips[order[: self.max_chips]]
        return chips


@CHIP_POLICY_REGISTRY.register()
class PyramidChipPolicy(ChipPolicy):
    """The multi-scale baseline: the whole image at every scale."""

    @configurable
    def __init__(self):
        pass

    @classmethod
    def from_config(cls, cfg):
        return {}

    def chips(self, *, next_scale, zoom, image_hw, parents, focus_maps, focus_stride):
        return torch.tensor([[0.0, 0.0, float(image_hw[1]), float(image_hw[0])]])


@CHIP_POLICY_REGISTRY.register()
class SingleScaleChipPolicy(PyramidChipPolicy):
    """The first scale only."""

    def num_scales(self, num_configured: int) -> int:
        return 1


@CHIP_POLICY_REGISTRY.register()
class GridChipPolicy(ChipPolicy):
    """SAHI-style slicing: uniform overlapping square tiles of ``tile_size`` pixels of the finer
    scale over the whole image, neighbours overlapping by ``overlap`` of the tile."""

    @configurable
    def __init__(self, *, tile_size: int, overlap: float):
        self.tile_size = tile_size
        self.overlap = overlap

    @classmethod
    def from_config(cls, cfg):
        return {"tile_size": cfg.MODEL.AUTOFOCUS.GRID_TILE_SIZE, "overlap": cfg.MODEL.AUTOFOCUS.GRID_OVERLAP}

    def chips(self, *, next_scale, zoom, image_hw, parents, focus_maps, focus_stride):
        tile = max(1, int(round(self.tile_size / zoom)))
        overlap = int(round(tile * self.overlap))
        boxes = tile_box((0, 0, image_hw[1], image_hw[0]), tile, overlap)
        return torch.tensor(boxes, dtype=torch.float32).clamp(min=0)


_POLICY_NAMES = {
    "autofocus": "AutoFocusChipPolicy",
    "pyramid": "PyramidChipPolicy",
    "single": "SingleScaleChipPolicy",
    "grid": "GridChipPolicy",
}


def build_chip_policy(cfg) -> ChipPolicy:
    """The policy named by ``MODEL.AUTOFOCUS.CHIP_POLICY``: a short name (autofocus, pyramid,
    single, grid) or any class name registered in CHIP_POLICY_REGISTRY."""
    name = cfg.MODEL.AUTOFOCUS.CHIP_POLICY
    key = f"MODEL.AUTOFOCUS.CHIP_POLICY (short names: {sorted(_POLICY_NAMES)})"
    return lookup_registry(CHIP_POLICY_REGISTRY, _POLICY_NAMES.get(name, name), key)(cfg)


def policy_names() -> List[str]:
    """The short names of the built-in policies."""
    return sorted(_POLICY_NAMES)
