"""Offline focus stacking: run the detector once per image and scale, then re-stack the stored
detections for any FocusChip setting in milliseconds instead of a benchmark run.

What is stored per image (:func:`collect_image`): every scale of the chain on the whole image (the
pyramid's views), each view's raw detections in the ORIGINAL frame and, for every scale but the
last, its FocusPixel map. Re-stacking one setting (:func:`restack_image`) then does what the
pipeline does, from the stored parts:

- FocusChips of scale k from the maps of scale k-1's views through the setting's chip policy
  (scale 0's maps are the pipeline's own; a chip's map at a finer scale is read from the same
  scale's whole-image map, cell by cell);
- a chip view's detections are the whole-image detections of its scale that lie inside the chip
  (an object cut by the chip would be dropped by the border rule in a chip pass anyway);
- the pipeline's own focus stacking (:meth:`CoarseToFinePipeline.stack`).

Where the stored views are the views the pipeline processed (:func:`restack_views`), re-stacking
gives the pipeline's detections exactly; for other chips it predicts them, up to the context a
chip pass lacks (``tools/tune_autofocus.py`` confirms its choice with one real run).
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances

from ..inference.chip_policies import ChipPolicy
from ..inference.pipeline import CoarseToFinePipeline, prepare_image
from ..structures.views import View

__all__ = ["StoredImage", "collect_image", "restack_image", "restack_views", "crop_focus_map"]

# A whole-image detection belongs to a chip when it lies inside the chip within this many
# original-frame pixels (rounding of the view's frame mapping).
_INSIDE_TOL = 1e-3


@dataclass
class StoredImage:
    """The pyramid's per-view results of one image, enough to re-stack any chip setting.

    Attributes:
        image_hw: (H, W) of the original image.
        views_per_scale: per scale, the whole-image views (tiles where the image is longer than the
            pipeline's ``max_chip_side``), image_index 0.
        dets_per_scale: aligned with ``views_per_scale``: each view's raw Instances (CPU), boxes in
            the ORIGINAL frame.
        maps_per_scale: aligned likewise: each view's FocusPixel probabilities (h, w) on the CPU
            at the model's focus stride in the view's frame; None at the last scale.
        focus_stride: pixels of a view per focus-map cell.
    """

    image_hw: Tuple[int, int]
    views_per_scale: List[List[View]]
    dets_per_scale: List[List[Instances]]
    maps_per_scale: List[List[Optional[torch.Tensor]]]
    focus_stride: int

    @property
    def pyramid_pixels(self) -> int:
        return sum(v.pixels for views in self.views_per_scale for v in views)


def collect_image(model, pipeline: CoarseToFinePipeline, image: torch.Tensor) -> StoredImage:
    """Run ``model`` (a :class:`FocusDetector`) on every scale of ``pipeline``'s chain over the whole
    ``image`` ((C, H, W), original frame), with FocusPixel maps at every scale but the last."""
    image = prepare_image(image, model.input_channels, 0, model.device)
    hw = tuple(image.shape[-2:])
    views_per_scale = pipeline.pyramid_views(hw)
    dets_per_scale, maps_per_scale = [], []
    for k, views in enumerate(views_per_scale):
        with_focus = k + 1 < len(views_per_scale)
        dets, maps = pipeline.run_views(model, [image], views, with_focus)
        dets_per_scale.append([d.to("cpu") for d in dets])
        maps_per_scale.append([None if m is None else m.cpu() for m in maps])
    return StoredImage(hw, views_per_scale, dets_per_scale, maps_per_scale, int(model.focus_stride))


def crop_focus_map(source: torch.Tensor, source_view: View, view: View, stride: int) -> torch.Tensor:
    """The FocusPixel map of ``view`` read from ``source`` (the map of ``source_view``, a view of the
    same image at the same scale that contains it): each cell of ``view``'s grid ((ceil(h / stride),
    ceil(w / stride)), at ``stride`` pixels of ``view``) takes the source cell under its centre."""
    h, w = view.out_hw
    rows, cols = -(-h // stride), -(-w // stride)
    sx, sy = view.factors
    tx, ty = source_view.factors
    ys = (torch.arange(rows, dtype=torch.float64) + 0.5) * stride / sy + view.box[1]
    xs = (torch.arange(cols, dtype=torch.float64) + 0.5) * stride / sx + view.box[0]
    src_r = ((ys - source_view.box[1]) * ty / stride).floor().long().clamp(0, source.shape[0] - 1)
    src_c = ((xs - source_view.box[0]) * tx / stride).floor().long().clamp(0, source.shape[1] - 1)
    return source[src_r][:, src_c]


def _inside(boxes: torch.Tensor, region: Sequence[int]) -> torch.Tensor:
    r = boxes.new_tensor(region)
    return ((boxes[:, :2] >= r[:2] - _INSIDE_TOL) & (boxes[:, 2:] <= r[2:] + _INSIDE_TOL)).all(dim=1)


def _containing_view(views: Sequence[View], box: Sequence[int]) -> int:
    """Index of the first view whose box contains ``box`` (whole image: the only one; tiles: one)."""
    for i, v in enumerate(views):
        if v.box[0] <= box[0] and v.box[1] <= box[1] and v.box[2] >= box[2] and v.box[3] >= box[3]:
            return i
    # A chip spanning two tiles: the tile holding its centre.
    cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
    for i, v in enumerate(views):
        if v.box[0] <= cx < v.box[2] and v.box[1] <= cy < v.box[3]:
            return i
    return 0


def _chip_detections(stored: StoredImage, scale: int, chip: View) -> Instances:
    """The whole-image detections of ``scale`` that lie inside ``chip`` (original frame)."""
    dets = Instances.cat(stored.dets_per_scale[scale]) if len(stored.dets_per_scale[scale]) > 1 \
        else stored.dets_per_scale[scale][0]
    return dets[_inside(dets.pred_boxes.tensor, chip.box)]


def restack_views(
    pipeline: CoarseToFinePipeline,
    image_hw: Tuple[int, int],
    views_per_scale: List[List[View]],
    dets_per_scale: List[List[Instances]],
) -> Instances:
    """Focus stacking of one image's stored views and their detections (original frame): the
    pipeline's own :meth:`CoarseToFinePipeline.stack`, so stored views of a pipeline run give that
    run's detections (before ``detector_postprocess``)."""
    return pipeline.stack(0, image_hw, views_per_scale, dets_per_scale)


def restack_image(
    stored: StoredImage,
    pipeline: CoarseToFinePipeline,
    policy: ChipPolicy,
    gt_boxes: Optional[torch.Tensor] = None,
) -> Tuple[Instances, Dict[str, Any]]:
    """
    Predict what ``pipeline`` with chip ``policy`` detects on the image of ``stored``.

    Scale 0 is the stored whole-image views; scale k >= 1 the ``policy``'s chips from the maps of
    scale k-1's views (read from the stored whole-image maps), each with the stored scale-k
    detections inside it; then the pipeline's stacking. ``gt_boxes`` ((G, 4), original frame)
    are handed to the policy (the oracle needs them).

    Returns:
        Instances in the ORIGINAL frame (boxes, scores, pred_classes), and the image's stats:
        ``pixels_per_scale``, ``chips_per_scale`` and ``pyramid_pixels``.
    """
    zooms = pipeline.scale_chain.zooms(stored.image_hw)
    num_scales = policy.num_scales(len(zooms))
    views_per_scale = [list(stored.views_per_scale[0])]
    dets_per_scale = [list(stored.dets_per_scale[0])]
    for k in range(1, num_scales):
        parents = views_per_scale[k - 1]
        if policy.needs_focus:
            whole = stored.views_per_scale[k - 1]
            maps = []
            for p in parents:
                if k == 1:  # scale 0's views are the stored ones: their own maps
                    maps.append(stored.maps_per_scale[0][whole.index(p)])
                else:
                    i = _containing_view(whole, p.box)
                    maps.append(crop_focus_map(stored.maps_per_scale[k - 1][i], whole[i], p, stored.focus_stride))
        else:
            maps = [None] * len(parents)
        chips = policy.chips(next_scale=k, zoom=zooms[k], image_hw=stored.image_hw, parents=parents,
                             focus_maps=maps, focus_stride=stored.focus_stride, gt_boxes=gt_boxes)
        views = pipeline.views_for_chips(0, k, chips.cpu(), zooms[k])
        views_per_scale.append(views)
        dets_per_scale.append([_chip_detections(stored, k, v) for v in views])
    instances = restack_views(pipeline, stored.image_hw, views_per_scale, dets_per_scale)
    stats = {
        "pixels_per_scale": [sum(v.pixels for v in vs) for vs in views_per_scale],
        "chips_per_scale": [len(vs) for vs in views_per_scale],
        "pyramid_pixels": stored.pyramid_pixels,
    }
    return instances, stats
