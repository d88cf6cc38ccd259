"""Running the detector on views: padded batches (:mod:`view_batching`) or fixed-shape chip
canvases (:mod:`chip_canvas`), each pass with its own settings passed to
:meth:`FocusDetector.detect` as arguments, and every view's detections mapped back to the
original image frame."""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances

from ..structures.views import View, area_downscale, crop_and_resize, instances_to_original
from .chip_canvas import (
    canvas_alignment,
    canvas_batch,
    canvas_proposal_budget,
    check_canvas_shapes,
    chip_focus_map,
    chip_instances,
    compose_canvas,
    pack_chips,
)
from .precision import inference_autocast, outputs_to_float32
from .view_batching import plan_view_batches

__all__ = ["ViewRunSettings", "run_views", "view_image", "pass_options"]


@dataclass(frozen=True)
class ViewRunSettings:
    """How views are run; each field is the :class:`CoarseToFinePipeline` argument of that name
    (see the MODEL.AUTOFOCUS keys of config.py for meanings and units)."""

    chip_batch_size: int
    max_batch_padding: float
    max_batch_pixels: float
    proposals_per_mpix: float
    min_proposals: int
    raw_score_thresh: Optional[float]
    inference_dtype: str
    chip_canvases: Sequence[Tuple[int, int]]
    canvas_gap: int
    area_downscale: bool


def pass_options(settings: ViewRunSettings, view_pixels: Sequence[int]) -> Dict[str, Any]:
    """The per-pass keyword arguments of ``detect`` for a pass over views of ``view_pixels``
    pixels each: ``max_proposals`` (per view ``max(min_proposals, ceil(proposals_per_mpix * its
    Mpix))``, summed over the views that share one image of the pass; absent when
    ``proposals_per_mpix`` is 0) and ``raw_score_thresh`` (absent for filtered view detections)."""
    options: Dict[str, Any] = {}
    budget = canvas_proposal_budget(view_pixels, settings.proposals_per_mpix, settings.min_proposals)
    if budget is not None:
        options["max_proposals"] = budget
    if settings.raw_score_thresh is not None:
        options["raw_score_thresh"] = settings.raw_score_thresh
    return options


def view_image(images: List[torch.Tensor], view: View, use_area_downscale: bool = False) -> torch.Tensor:
    """The pixels of ``view`` (C, h, w): scale-0 views by :func:`area_downscale` when
    ``use_area_downscale`` is on, every other view by :func:`crop_and_resize`."""
    if use_area_downscale and view.scale == 0:
        return area_downscale(images[view.image_index], view.box, view.out_hw)
    return crop_and_resize(images[view.image_index], view.box, view.out_hw)


def run_views(
    model, images: List[torch.Tensor], views: List[View], with_focus: bool, settings: ViewRunSettings
) -> Tuple[List[Instances], List[Optional[torch.Tensor]]]:
    """
    Run ``model`` (a FocusDetector) on ``views`` of the (C, H, W) ``images``: finer-scale views
    packed into canvases when ``settings.chip_canvases`` is set, the rest in padded batches of at
    most ``chip_batch_size`` views and at most ``max_batch_pixels`` padded pixels (0: no limit; a
    larger view runs alone), grouped by :func:`plan_view_batches` so that padding adds at most
    ``max_batch_padding`` of a batch's own pixels; under autocast when ``inference_dtype`` is not
    float32. A batch's proposal budget is that of its largest view (every image of a batch gets the
    same RPN top-k).

    Returns, aligned with ``views``: Instances in the ORIGINAL image frame (every field mapped
    by :func:`instances_to_original`, which raises on a field it cannot map), and the
    FocusPixel map (h, w) of each view in its own frame (None without focus).
    """
    results: List[Optional[Instances]] = [None] * len(views)
    focus_maps: List[Optional[torch.Tensor]] = [None] * len(views)
    todo = list(range(len(views)))
    if settings.chip_canvases and any(v.scale > 0 for v in views):
        todo = _run_canvases(model, images, views, with_focus, settings, results, focus_maps)
    batches = plan_view_batches(
        [views[i].out_hw for i in todo],
        max_batch_size=settings.chip_batch_size,
        size_divisibility=model.size_divisibility,
        max_padding=settings.max_batch_padding,
        max_pixels=settings.max_batch_pixels,
    )
    for batch in ([todo[j] for j in batch] for batch in batches):
        image_list = model.normalize([view_image(images, views[i], settings.area_downscale) for i in batch])
        options = pass_options(settings, [max(views[i].pixels for i in batch)])
        with inference_autocast(model.device, settings.inference_dtype):
            instances, focus = model.detect(image_list, with_focus=with_focus, **options)
        for j, i in enumerate(batch):
            inst = outputs_to_float32(instances[j])
            results[i] = instances_to_original(inst, views[i], images[views[i].image_index].shape[-2:])
            if focus is not None:
                focus_maps[i] = focus[j].float()
    return results, focus_maps


def _run_canvases(
    model,
    images: List[torch.Tensor],
    views: List[View],
    with_focus: bool,
    settings: ViewRunSettings,
    results: List[Optional[Instances]],
    focus_maps: List[Optional[torch.Tensor]],
) -> List[int]:
    """Finer-scale views packed into canvases of the ``chip_canvases`` shapes
    (:mod:`chip_canvas`), one detector pass per canvas; fills ``results`` (ORIGINAL frame) and
    ``focus_maps`` (each view's own frame) of the packed views and returns the indices of the
    views larger than every canvas, left to the batched path."""
    align = canvas_alignment(model.size_divisibility, model.focus_stride)
    shapes = check_canvas_shapes(settings.chip_canvases, align)
    hws = [v.out_hw for v in views]
    plan = pack_chips(hws, shapes, gap=settings.canvas_gap, align=align)
    for c, members in enumerate(plan.members):
        chips = [
            model.normalize([view_image(images, views[i], settings.area_downscale)]).tensor[0]
            for i in members
        ]
        offsets = [(plan.placements[i].x, plan.placements[i].y) for i in members]
        canvas = compose_canvas([x[:, : hws[i][0], : hws[i][1]] for x, i in zip(chips, members)], offsets,
                                plan.shapes[c])
        pixels = [views[i].pixels for i in members]
        options = pass_options(settings, pixels)
        with inference_autocast(model.device, settings.inference_dtype):
            instances, focus = model.detect(canvas_batch(canvas, sum(pixels)), with_focus=with_focus, **options)
        per_chip = chip_instances(outputs_to_float32(instances[0]), members, plan, hws, settings.canvas_gap)
        for i, inst in zip(members, per_chip):
            results[i] = instances_to_original(inst, views[i], images[views[i].image_index].shape[-2:])
            if focus is not None:
                focus_maps[i] = chip_focus_map(focus[0].float(), plan.placements[i], hws[i],
                                               model.focus_stride, model.size_divisibility)
    return plan.unplaced
