"""Chip policies: which regions of an image are processed at each finer scale.

Every policy runs through the same pipeline and the same focus stacking, so comparing policies on
one set of weights is fair. Policies are picked by ``MODEL.AUTOFOCUS.CHIP_POLICY``.
"""
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Boxes
from detectron2.utils.registry import Registry

from ..config import lookup_registry, per_transition, validate_autofocus_config
from ..config_checks import (
    check,
    check_at_least,
    check_dilations,
    check_focus_label_range,
    check_in_range,
    check_min_sizes,
    check_probabilities,
)
from ..structures.focus_labels import FOCUS_POSITIVE, focus_pixel_targets, focus_size_range
from .focus_chips import generate_focus_chips, merge_overlapping_boxes
from ..structures.views import View, snap_to_pixels, tile_box

__all__ = [
    "CHIP_POLICY_REGISTRY",
    "ChipPolicy",
    "AutoFocusChipPolicy",
    "PyramidChipPolicy",
    "SingleScaleChipPolicy",
    "GridChipPolicy",
    "OracleChipPolicy",
    "build_chip_policy",
    "input_gt_boxes",
    "oracle_focus_map",
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

    def check_scales(self, num_configured: int) -> None:
        """Raise ValueError naming the argument when the policy's per-transition settings do not
        fit a chain of ``num_configured`` scales (the pipeline calls this when it is built)."""

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
        gt_boxes: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            next_scale: index (>= 1) of the scale the chips are for; ``zoom`` its zoom factor
                relative to the original image.
            image_hw: (H, W) of the original image.
            parents: the views of this image processed at ``next_scale - 1``.
            focus_maps: per parent, its FocusPixel probabilities (h, w) at ``focus_stride`` in
                the parent view's frame (None when the policy does not need focus).
            gt_boxes: (G, 4) XYXY ground-truth boxes of the image in ORIGINAL pixels, or None
                when the input has no ground truth. Only :class:`OracleChipPolicy` uses them.

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
        """thresholds (probability), dilations (cells), min_sizes (pixels of the parent's scale):
        one per scale transition; max_chips: per image and scale (see MODEL.AUTOFOCUS in config.py)."""
        check_probabilities(thresholds, "thresholds")
        check_dilations(dilations, "dilations")
        check_min_sizes(min_sizes, "min_sizes")
        check_at_least(max_chips, 1, "max_chips", integer=True)
        self.thresholds = [float(t) for t in thresholds]
        self.dilations = [int(d) for d in dilations]
        self.min_sizes = [float(m) for m in min_sizes]
        self.max_chips = int(max_chips)

    def check_scales(self, num_configured: int) -> None:
        n = num_configured - 1
        for name in ("thresholds", "dilations", "min_sizes"):
            values = getattr(self, name)
            check(n == 0 or len(values) == n, name,
                  f"{len(values)} values for {n} scale transitions: give one per transition "
                  f"(one fewer than the {num_configured} scales of the scale chain)")

    @classmethod
    def from_config(cls, cfg):
        validate_autofocus_config(cfg)  # a yacs config: errors name the keys
        af = cfg.MODEL.AUTOFOCUS
        n = max(1, len(af.SCALES) - 1)
        return {
            "thresholds": per_transition(af.FOCUS_THRESHOLD, n, "MODEL.AUTOFOCUS.FOCUS_THRESHOLD"),
            "dilations": per_transition(af.DILATION, n, "MODEL.AUTOFOCUS.DILATION"),
            "min_sizes": per_transition(af.MIN_CHIP_SIZE, n, "MODEL.AUTOFOCUS.MIN_CHIP_SIZE"),
            "max_chips": af.MAX_CHIPS_PER_IMAGE,
        }

    def chips(self, *, next_scale, zoom, image_hw, parents, focus_maps, focus_stride, gt_boxes=None):
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
        validate_autofocus_config(cfg)
        return {}

    def chips(self, *, next_scale, zoom, image_hw, parents, focus_maps, focus_stride, gt_boxes=None):
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
        """tile_size: pixels of the finer scale (>= 1); overlap: fraction of the tile in [0, 1)."""
        check_at_least(tile_size, 1, "tile_size")
        check_in_range(overlap, 0.0, 1.0, "overlap", hi_open=True)
        self.tile_size = tile_size
        self.overlap = overlap

    @classmethod
    def from_config(cls, cfg):
        validate_autofocus_config(cfg)
        return {"tile_size": cfg.MODEL.AUTOFOCUS.GRID_TILE_SIZE, "overlap": cfg.MODEL.AUTOFOCUS.GRID_OVERLAP}

    def chips(self, *, next_scale, zoom, image_hw, parents, focus_maps, focus_stride, gt_boxes=None):
        tile = max(1, int(round(self.tile_size / zoom)))
        overlap = int(round(tile * self.overlap))
        boxes = tile_box((0, 0, image_hw[1], image_hw[0]), tile, overlap)
        return torch.tensor(boxes, dtype=torch.float32).clamp(min=0)


def input_gt_boxes(x: Dict[str, Any], image_hw: Tuple[int, int]) -> Optional[torch.Tensor]:
    """
    The ground-truth boxes of one pipeline input, in the frame of its image tensor (the
    pipeline's ORIGINAL frame), for :meth:`ChipPolicy.chips`'s ``gt_boxes``.

    Args:
        x: a Detectron2 input dict; its optional ``"instances"`` (Instances with ``gt_boxes``) are
            in the frame of ``instances.image_size`` (Detectron2's mapper: the image tensor's;
            a loader may keep them at the dataset's (height, width) instead).
        image_hw: (H, W) of the input's image tensor.

    Returns:
        (G, 4) float XYXY boxes rescaled from ``instances.image_size`` to ``image_hw``, or None when
        the input has no ``"instances"``.
    """
    if "instances" not in x:
        return None
    inst = x["instances"]
    if not inst.has("gt_boxes"):
        raise ValueError(f"input 'instances' have no gt_boxes (fields: {sorted(inst.get_fields())})")
    boxes = inst.gt_boxes.tensor if isinstance(inst.gt_boxes, Boxes) else torch.as_tensor(inst.gt_boxes)
    (h, w), (gh, gw) = image_hw, inst.image_size
    if (h, w) == (gh, gw):
        return boxes.float()
    return boxes.float() * boxes.new_tensor([w / gw, h / gh, w / gw, h / gh], dtype=torch.float32)


def oracle_focus_map(
    view: View, boxes: torch.Tensor, *, stride: int, small_range: Sequence[float], ignore_max: float
) -> torch.Tensor:
    """
    The perfect FocusPixel map of a view: 1.0 where :func:`focus_pixel_targets` (the training
    labels) labels a cell positive, 0.0 elsewhere (negative and ignored cells). The one place
    that turns ground truth into FocusPixels at inference (oracle policy and oracle analysis).

    Args:
        view: the view; its frame is its ``out_hw`` image.
        boxes: (N, 4) XYXY ground truth of the view's image, in ORIGINAL pixels. They are mapped
            to the view's frame and clipped to it, and those left empty dropped, as Detectron2's
            crop transform does to the training labels the focus head learns from.
        stride: map stride, in pixels of the view per cell.
        small_range, ignore_max: FocusPixel size range and ignore limit, sqrt(area) in pixels of
            the view (``MODEL.FOCUS_HEAD.SMALL_RANGE`` / ``IGNORE_MAX``).

    Returns:
        (ceil(h / stride), ceil(w / stride)) float32 map in the view's cell frame, on the
        device of ``boxes``.
    """
    sx, sy = view.factors
    x0, y0 = view.box[0], view.box[1]
    h, w = view.out_hw
    offset, factors = boxes.new_tensor([x0, y0, x0, y0]), boxes.new_tensor([sx, sy, sx, sy])
    in_view = Boxes(((boxes - offset) * factors).float())
    in_view.clip((h, w))
    labels = focus_pixel_targets(
        in_view[in_view.nonempty()],
        image_hw=(h, w),
        feature_hw=(math.ceil(h / stride), math.ceil(w / stride)),
        stride=stride,
        small_range=small_range,
        ignore_max=ignore_max,
    )
    return (labels == FOCUS_POSITIVE).float()


@CHIP_POLICY_REGISTRY.register()
class OracleChipPolicy(ChipPolicy):
    """AutoFocus with perfect FocusPixels: each parent view's map is :func:`oracle_focus_map` of
    the image's ground truth (the focus head's training labels), turned into chips exactly as
    :class:`AutoFocusChipPolicy` does (threshold 0.5 on the binary map). AutoFocus's upper bound,
    and a way to time any detector before its focus head is trained: no focus head pass is run.
    Needs ``gt_boxes`` (original frame) for every image."""

    needs_focus = False

    @configurable
    def __init__(
        self,
        *,
        dilations: Sequence[int],
        min_sizes: Sequence[float],
        max_chips: int,
        small_range: Sequence[float],
        ignore_max: float,
        small_min_frame: str = "input",
    ):
        """
        Args:
            dilations, min_sizes: one per scale transition (MODEL.AUTOFOCUS.DILATION, cells;
                MODEL.AUTOFOCUS.MIN_CHIP_SIZE, pixels of the parent's scale).
            max_chips: MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE.
            small_range, ignore_max: MODEL.FOCUS_HEAD.SMALL_RANGE / IGNORE_MAX, sqrt(area) in
                pixels of the parent view.
            small_min_frame: MODEL.FOCUS_HEAD.SMALL_MIN_FRAME, as the training labels
                (:func:`focus_size_range`, with the zoom step from the parent to the next scale).
        """
        check_dilations(dilations, "dilations")
        check_min_sizes(min_sizes, "min_sizes")
        check(len(dilations) == len(min_sizes), "min_sizes",
              f"{len(min_sizes)} values but {len(dilations)} dilations: give one of each per scale transition")
        check_focus_label_range(small_range, ignore_max, "small_range", "ignore_max")
        self.small_range = (float(small_range[0]), float(small_range[1]))
        focus_size_range(self.small_range, 1.0, small_min_frame)  # checks the frame's name
        self.small_min_frame = small_min_frame
        self.ignore_max = float(ignore_max)
        self.focus = AutoFocusChipPolicy(
            thresholds=[0.5] * len(dilations),
            dilations=[int(d) for d in dilations],
            min_sizes=[float(m) for m in min_sizes],
            max_chips=int(max_chips),
        )

    @classmethod
    def from_config(cls, cfg):
        validate_autofocus_config(cfg)
        af, head = cfg.MODEL.AUTOFOCUS, cfg.MODEL.FOCUS_HEAD
        n = max(1, len(af.SCALES) - 1)
        return {
            "dilations": per_transition(af.DILATION, n, "MODEL.AUTOFOCUS.DILATION"),
            "min_sizes": per_transition(af.MIN_CHIP_SIZE, n, "MODEL.AUTOFOCUS.MIN_CHIP_SIZE"),
            "max_chips": af.MAX_CHIPS_PER_IMAGE,
            "small_range": list(head.SMALL_RANGE),
            "ignore_max": head.IGNORE_MAX,
            "small_min_frame": head.SMALL_MIN_FRAME,
        }

    def check_scales(self, num_configured: int) -> None:
        self.focus.check_scales(num_configured)

    def chips(self, *, next_scale, zoom, image_hw, parents, focus_maps, focus_stride, gt_boxes=None):
        image = parents[0].image_index if parents else "?"
        if gt_boxes is None:
            raise ValueError(
                f"the oracle chip policy needs the ground truth of image {image}: give each input "
                "'instances' with gt_boxes (original image frame), or pick another "
                "MODEL.AUTOFOCUS.CHIP_POLICY"
            )
        if isinstance(gt_boxes, Boxes):
            gt_boxes = gt_boxes.tensor
        if gt_boxes.ndim != 2 or gt_boxes.shape[1] != 4 or not bool(torch.isfinite(gt_boxes).all()):
            raise ValueError(
                f"gt_boxes of image {image} must be finite (G, 4) XYXY boxes in original pixels, "
                f"got shape {tuple(gt_boxes.shape)}"
            )
        maps = [
            oracle_focus_map(p, gt_boxes, stride=focus_stride, ignore_max=self.ignore_max,
                             small_range=focus_size_range(self.small_range, zoom / p.zoom, self.small_min_frame))
            for p in parents
        ]
        return self.focus.chips(next_scale=next_scale, zoom=zoom, image_hw=image_hw, parents=parents,
                                focus_maps=maps, focus_stride=focus_stride)


_POLICY_NAMES = {
    "autofocus": "AutoFocusChipPolicy",
    "oracle": "OracleChipPolicy",
    "pyramid": "PyramidChipPolicy",
    "single": "SingleScaleChipPolicy",
    "grid": "GridChipPolicy",
}


def build_chip_policy(cfg) -> ChipPolicy:
    """The policy named by ``MODEL.AUTOFOCUS.CHIP_POLICY``: a short name (autofocus, oracle,
    pyramid, single, grid) or any class name registered in CHIP_POLICY_REGISTRY."""
    name = cfg.MODEL.AUTOFOCUS.CHIP_POLICY
    key = f"MODEL.AUTOFOCUS.CHIP_POLICY (short names: {sorted(_POLICY_NAMES)})"
    return lookup_registry(CHIP_POLICY_REGISTRY, _POLICY_NAMES.get(name, name), key)(cfg)


def policy_names() -> List[str]:
    """The short names of the built-in policies."""
    return sorted(_POLICY_NAMES)
