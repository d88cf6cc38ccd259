"""The coarse-to-fine chip pipeline: scale 0 on whole images, then chips at each finer scale,
then focus stacking. Returns ordinary Detectron2 outputs (plus what the pipeline did)."""
import logging
from collections import defaultdict
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from ..config import INFERENCE_DTYPE_NAMES, NMS_METHODS, validate_autofocus_config
from ..config_checks import (
    check,
    check_at_least,
    check_canvas_list,
    check_choice,
    check_in_range,
    check_ranges,
    check_tiling,
)
from .chip_policies import ChipPolicy, build_chip_policy, input_gt_boxes
from .detector_interface import require_focus_detector
from .input_check import prepare_image
from .view_runner import ViewRunSettings, run_views
from .focus_stacking import merge_indices, stacking_keep_mask
# The registry lives below modeling and inference (the models build their pipeline from it).
from ..pipeline_registry import AUTOFOCUS_PIPELINE_REGISTRY, build_autofocus_pipeline
from ..structures.image_stats import ImageStats
from ..structures.scale_chain import ScaleChain, skipped_from_zooms
from ..structures.views import View, tile_views

__all__ = ["AUTOFOCUS_PIPELINE_REGISTRY", "CoarseToFinePipeline", "build_autofocus_pipeline", "prepare_image"]

logger = logging.getLogger(__name__)

@AUTOFOCUS_PIPELINE_REGISTRY.register()
class CoarseToFinePipeline:
    """
    Scale 0: each whole image resized to scale 0 of the ``scale_chain`` -> detections (+ FocusPixel
    maps). Scale k >= 1: the policy's chips of scale k-1 (original frame), cropped from the original
    image and zoomed by the image's zoom of scale k, run in padded batches of at most
    ``chip_batch_size``. Detections of every view are mapped to the original frame and
    focus-stacked. With ``raw_score_thresh`` set, each view's detections are raw (the detector's
    per-view NMS and top-k off, score threshold ``raw_score_thresh``): the paper's merge.

    Every per-instance field a Detectron2 head predicts crosses views (:func:`instances_to_original`:
    boxes and keypoint x, y are mapped, box-relative ``pred_masks`` (N, 1, M, M) and
    ``pred_keypoint_heatmaps`` carried as they are, an unknown field raises ValueError naming it),
    and stacking selects whole Instances, so masks and keypoints follow their boxes through
    Soft-NMS; ``detector_postprocess`` pastes the masks and scales the keypoints for the output
    size at the end. The head runs inside ``detect`` on whatever detections the view gives: with
    ``VIEW_DETECTIONS: filtered`` on the view's top-k after per-view NMS, in raw mode on every raw
    detection (far more per view, so far more mask / keypoint head work), so mask / keypoint configs
    use ``filtered`` (docs/model_family.md, "Instance masks and keypoints", has the measurement).
    """

    @configurable
    def __init__(
        self,
        *,
        policy: ChipPolicy,
        scale_chain: ScaleChain,
        chip_batch_size: int,
        max_chip_side: int,
        tile_overlap: int,
        border_margin: float,
        small_drop_size: float,
        valid_ranges: Sequence[Tuple[float, float]],
        nms_method: str,
        nms_thresh: float,
        proposals_per_mpix: float = 0.0,
        min_proposals: int = 300,
        soft_nms_sigma: float,
        detections_per_image: int,
        raw_score_thresh: Optional[float] = None,
        max_batch_padding: float = 0.1,
        inference_dtype: str = "float32",
        max_batch_pixels: float = 8_000_000,
        chip_canvases: Sequence[Sequence[int]] = (),
        canvas_gap: int = 64,
        area_downscale: bool = False,
    ):
        """See the MODEL.AUTOFOCUS keys of config.py for each argument's meaning and unit. Every
        argument is checked here (by the rules of :mod:`autofocus_d2.config_checks`), so a bad value
        raises ValueError naming the argument whatever built the pipeline (yacs, LazyConfig, Python)."""
        check(isinstance(policy, ChipPolicy), "policy", f"must be a ChipPolicy, got {type(policy).__name__}")
        check(isinstance(scale_chain, ScaleChain), "scale_chain",
              f"must be a ScaleChain, got {type(scale_chain).__name__}")
        policy.check_scales(len(scale_chain))
        check_at_least(chip_batch_size, 1, "chip_batch_size", integer=True)
        check_tiling(max_chip_side, tile_overlap, "max_chip_side", "tile_overlap")
        check_at_least(border_margin, 0, "border_margin")
        check_at_least(small_drop_size, 0, "small_drop_size")
        check_ranges(valid_ranges, "valid_ranges", num_scales=len(scale_chain))
        check_choice(nms_method, NMS_METHODS, "nms_method")
        check_in_range(nms_thresh, 0.0, 1.0, "nms_thresh", lo_open=True)
        check_at_least(proposals_per_mpix, 0, "proposals_per_mpix")
        check_at_least(min_proposals, 1, "min_proposals", integer=True)
        check_at_least(soft_nms_sigma, 1e-6, "soft_nms_sigma")
        check_at_least(detections_per_image, 1, "detections_per_image", integer=True)
        if raw_score_thresh is not None:
            check_in_range(raw_score_thresh, 0.0, 1.0, "raw_score_thresh", hi_open=True)
        check_at_least(max_batch_padding, 0, "max_batch_padding")
        check_choice(inference_dtype, INFERENCE_DTYPE_NAMES, "inference_dtype")
        check_at_least(max_batch_pixels, 0, "max_batch_pixels")
        check_canvas_list(chip_canvases, "chip_canvases")
        check_at_least(canvas_gap, 0, "canvas_gap", integer=True)
        check_choice(area_downscale, (True, False), "area_downscale")
        self.policy = policy
        self.scale_chain = scale_chain
        self.chip_batch_size = chip_batch_size
        self.max_chip_side = max_chip_side
        self.tile_overlap = tile_overlap
        self.border_margin = border_margin
        self.small_drop_size = small_drop_size
        self.valid_ranges = [tuple(r) for r in valid_ranges]
        self.proposals_per_mpix = proposals_per_mpix
        self.min_proposals = min_proposals
        self.nms_method = nms_method
        self.nms_thresh = nms_thresh
        self.soft_nms_sigma = soft_nms_sigma
        self.detections_per_image = detections_per_image
        self.raw_score_thresh = raw_score_thresh
        self.max_batch_padding = max_batch_padding
        self.inference_dtype = inference_dtype
        self.max_batch_pixels = max_batch_pixels
        # Keys of the once-per-pipeline warnings already logged (skipped scales, [0, 1] images).
        self.warned: Set[str] = set()
        self.chip_canvases = [tuple(int(v) for v in s) for s in chip_canvases]
        self.canvas_gap = int(canvas_gap)
        self.area_downscale = area_downscale

    @classmethod
    def from_config(cls, cfg):
        validate_autofocus_config(cfg)  # a yacs config: errors name the keys, not the arguments
        af = cfg.MODEL.AUTOFOCUS
        return {
            "policy": build_chip_policy(cfg),
            "scale_chain": ScaleChain(cfg),
            "chip_batch_size": af.CHIP_BATCH_SIZE,
            "max_chip_side": af.MAX_CHIP_SIDE,
            "tile_overlap": af.TILE_OVERLAP,
            "border_margin": af.BORDER_MARGIN,
            "small_drop_size": af.SMALL_DROP_SIZE,
            "valid_ranges": af.VALID_RANGES,
            "proposals_per_mpix": af.PROPOSALS_PER_MPIX,
            "min_proposals": af.MIN_PROPOSALS,
            "nms_method": af.NMS_METHOD,
            "nms_thresh": af.NMS_THRESH,
            "soft_nms_sigma": af.SOFT_NMS_SIGMA,
            # One setting for dense scenes: TEST.DETECTIONS_PER_IMAGE raises the final cap too
            # (evaluation.detection_cap.final_detection_cap).
            "detections_per_image": max(af.DETECTIONS_PER_IMAGE, cfg.TEST.DETECTIONS_PER_IMAGE),
            "raw_score_thresh": af.RAW_SCORE_THRESH if af.VIEW_DETECTIONS == "raw" else None,
            "max_batch_padding": af.MAX_BATCH_PADDING,
            "inference_dtype": af.INFERENCE_DTYPE,
            "max_batch_pixels": af.MAX_BATCH_PIXELS,
            "chip_canvases": af.CHIP_CANVASES,
            "canvas_gap": af.CHIP_CANVAS_GAP,
            "area_downscale": af.AREA_DOWNSCALE,
        }

    # ------------------------------------------------------------------------------ views
    def views_for_chips(self, image_index: int, scale: int, chips: torch.Tensor, zoom: float) -> List[View]:
        """Views of original-frame integer ``chips`` (N, 4) at ``scale``/``zoom``; a chip longer than
        ``max_chip_side`` pixels at that scale becomes overlapping tiles."""
        return [
            view
            for box in chips.round().long().tolist()
            for view in tile_views(image_index, scale, box, zoom, self.max_chip_side, self.tile_overlap)
        ]

    def first_views(self, image_index: int, image_hw: Tuple[int, int], zoom: Optional[float] = None) -> List[View]:
        """The views of scale 0: the whole image at its scale-0 size (tiled where too long);
        ``zoom``: the image's scale-0 zoom where the caller has it (else asked of the chain)."""
        h, w = image_hw
        if zoom is None:
            zoom = self.scale_chain.zoom(image_hw, 0)
        return tile_views(image_index, 0, (0, 0, w, h), zoom, self.max_chip_side, self.tile_overlap)

    def pyramid_views(self, image_hw: Tuple[int, int], zooms: Optional[Sequence[float]] = None) -> List[List[View]]:
        """The views of the full pyramid: the whole image (tiled where too long) at every scale;
        ``zooms``: the image's zooms where the caller has them (else asked of the chain)."""
        h, w = image_hw
        zooms = self.scale_chain.zooms(image_hw) if zooms is None else list(zooms)
        skipped = skipped_from_zooms(zooms)
        return [
            [] if k in skipped else tile_views(0, k, (0, 0, w, h), zooms[k], self.max_chip_side, self.tile_overlap)
            for k in range(len(zooms))
        ]

    def pyramid_pixels(self, image_hw: Tuple[int, int], zooms: Optional[Sequence[float]] = None) -> List[int]:
        """Pixels the full pyramid (every configured scale on the whole image) processes, per scale
        (0 at a scale skipped for this image size, see :meth:`ScaleChain.skipped_scales`)."""
        return [sum(v.pixels for v in views) for views in self.pyramid_views(image_hw, zooms)]

    # ------------------------------------------------------------------------------ running
    def view_settings(self) -> ViewRunSettings:
        """How this pipeline runs views (:mod:`view_runner`), read from its attributes at each call
        so that a setting changed on the pipeline (a LazyConfig override, a sweep) takes effect."""
        return ViewRunSettings(
            chip_batch_size=self.chip_batch_size,
            max_batch_padding=self.max_batch_padding,
            max_batch_pixels=self.max_batch_pixels,
            proposals_per_mpix=self.proposals_per_mpix,
            min_proposals=self.min_proposals,
            raw_score_thresh=self.raw_score_thresh,
            inference_dtype=self.inference_dtype,
            chip_canvases=tuple(self.chip_canvases),
            canvas_gap=self.canvas_gap,
            area_downscale=self.area_downscale,
        )

    def run_views(
        self, model, images: List[torch.Tensor], views: List[View], with_focus: bool
    ) -> Tuple[List[Instances], List[Optional[torch.Tensor]]]:
        """Run the detector on ``views`` with this pipeline's settings (:func:`view_runner.run_views`).
        Returns, aligned with ``views``: Instances in the ORIGINAL image frame, and the FocusPixel
        map (h, w) of each view in its own frame (None without focus)."""
        return run_views(model, images, views, with_focus, self.view_settings())

    def __call__(
        self, model, batched_inputs: List[Dict[str, Any]], *, with_details: bool = False
    ) -> List[Dict[str, Any]]:
        """Run the pipeline; see AutoFocusRCNN.forward for the outputs. With ``with_details``,
        each output also has ``autofocus_details``: ``views_per_scale`` (the :class:`View` s of
        that image per scale) and ``focus_maps_per_scale`` (per view, its FocusPixel map (h, w)
        at ``model.focus_stride`` in the view's frame, on the CPU; None where not computed) and
        ``detections_per_scale`` (per view, its Instances in the ORIGINAL frame before stacking, on
        the CPU: what :func:`autofocus_d2.tuning.restack_views` re-stacks)."""
        require_focus_detector(model)
        images = [
            prepare_image(x["image"], model.input_channels, i, model.device,
                          name=x.get("file_name"), warned=self.warned)
            for i, x in enumerate(batched_inputs)
        ]
        sizes = [tuple(img.shape[-2:]) for img in images]
        # Ground truth (original frame) where an input carries it: the oracle policy's FocusPixels.
        gt_boxes = [input_gt_boxes(x, hw) for x, hw in zip(batched_inputs, sizes)]
        # Per image, once: the zoom of every scale, the scales skipped at its size, the pyramid's pixels.
        zooms = [self.scale_chain.zooms(hw) for hw in sizes]
        num_scales = self.policy.num_scales(len(self.scale_chain))
        skipped = [[k for k in skipped_from_zooms(z) if k < num_scales] for z in zooms]
        pyramid_pixels = [self.pyramid_pixels(hw, z) for hw, z in zip(sizes, zooms)]
        for i, hw in enumerate(sizes):
            if skipped[i]:
                self.warn_skipped(hw, skipped[i][0], zooms[i])
        last_scale = [0] * len(sizes)  # per image, the finest scale processed so far

        views_per_scale = [[v for i, hw in enumerate(sizes) for v in self.first_views(i, hw, zooms[i][0])]]
        dets_per_scale, focus_per_scale = [], []
        of_image: List[List[List[int]]] = []  # per scale, per image: indices of its views (split once)
        for k in range(num_scales):
            views = views_per_scale[k]
            of_image.append(_split_by_image(views, len(sizes)))
            last = k + 1 == num_scales
            dets, focus_maps = self.run_views(model, images, views, self.policy.needs_focus and not last)
            dets_per_scale.append(dets)
            focus_per_scale.append(focus_maps)
            if last:
                break
            next_views = []
            for i, hw in enumerate(sizes):
                if k + 1 in skipped[i]:
                    continue  # no finer than the image's last scale: no chips there
                # Parents: the image's views at its finest processed scale (k unless k was skipped).
                p = last_scale[i]
                chips = self.policy.chips(
                    next_scale=k + 1,
                    zoom=zooms[i][k + 1],
                    image_hw=hw,
                    parents=[views_per_scale[p][j] for j in of_image[p][i]],
                    focus_maps=[focus_per_scale[p][j] for j in of_image[p][i]],
                    focus_stride=model.focus_stride,
                    gt_boxes=gt_boxes[i],
                )
                next_views.extend(self.views_for_chips(i, k + 1, chips, zooms[i][k + 1]))
                last_scale[i] = k + 1
            views_per_scale.append(next_views)

        outputs = []
        for i, (x, hw) in enumerate(zip(batched_inputs, sizes)):
            # This image's own views, detections and maps per scale (from the split made once above).
            own = [of_image[k][i] for k in range(len(views_per_scale))]
            views = [[views_per_scale[k][j] for j in own[k]] for k in range(len(own))]
            dets = [[dets_per_scale[k][j] for j in own[k]] for k in range(len(own))]
            instances = self.stack(i, hw, views, dets)
            height, width = x.get("height", hw[0]), x.get("width", hw[1])
            stats = replace(self.image_stats(i, hw, views, pyramid_pixels[i]), skipped_scales=skipped[i])
            outputs.append({"instances": detector_postprocess(instances, height, width), "autofocus": stats.to_dict()})
            if with_details:
                outputs[-1]["autofocus_details"] = {
                    "views_per_scale": views,
                    "focus_maps_per_scale": [
                        [None if focus_per_scale[k][j] is None else focus_per_scale[k][j].cpu() for j in own[k]]
                        for k in range(len(own))
                    ],
                    "detections_per_scale": [[d.to("cpu") for d in ds] for ds in dets],
                }
        return outputs

    def warn_skipped(self, image_hw: Tuple[int, int], scale: int, zooms: Sequence[float]) -> None:
        """Log, once per pipeline, that a scale is skipped on images of some size."""
        if "skipped_scale" in self.warned:
            return
        self.warned.add("skipped_scale")
        logger.warning(
            f"scale {scale} {list(self.scale_chain.scales[scale])} is no finer than the scale before "
            f"it on an image of {image_hw[0]} x {image_hw[1]} pixels (zooms {[round(z, 3) for z in zooms]}): "
            "it is skipped for such images (no chips there), and counted per image in the output's "
            "autofocus['skipped_scales']. Shown once per run."
        )

    # ------------------------------------------------------------------------------ stacking
    def stack(
        self,
        image_index: int,
        image_hw: Tuple[int, int],
        views_per_scale: List[List[View]],
        dets_per_scale: List[List[Instances]],
    ) -> Instances:
        """Focus stacking of one image: border rule, valid ranges, small-and-covered rule (covered =
        inside the part of a finer chip that the border rule trusts), then class-wise NMS /
        Soft-NMS over the concatenated detections, whose kept indices select whole Instances: every
        field (box-relative masks, keypoints, ...) follows its box, and ``scores`` become the merged
        (Soft-NMS decayed) scores. Returns Instances in the original image frame."""
        num_scales = len(views_per_scale)
        survivors = []
        for k in range(num_scales):
            finer = [
                v for v in (views_per_scale[k + 1] if k + 1 < num_scales else [])
                if v.image_index == image_index
            ]
            for view, inst in zip(views_per_scale[k], dets_per_scale[k]):
                if view.image_index != image_index:
                    continue
                keep = stacking_keep_mask(
                    inst.pred_boxes.tensor, view, finer, image_hw, border_margin=self.border_margin,
                    valid_range=self.valid_ranges[k], small_drop_size=self.small_drop_size,
                    num_scales=num_scales,
                )
                survivors.append(inst[keep])
        candidates = Instances.cat(survivors)
        keep, scores = merge_indices(
            candidates.pred_boxes.tensor,
            candidates.scores,
            candidates.pred_classes,
            nms_thresh=self.nms_thresh,
            max_det=self.detections_per_image,
            method=self.nms_method,
            soft_nms_sigma=self.soft_nms_sigma,
        )
        result = candidates[keep]
        result.scores = scores
        return result

    def image_stats(
        self,
        image_index: int,
        image_hw: Tuple[int, int],
        views_per_scale: List[List[View]],
        pyramid_pixels_per_scale: Optional[List[int]] = None,
    ) -> ImageStats:
        """What the pipeline did for one image (all plain Python numbers); the pyramid's pixels per
        scale are computed here unless given (:meth:`pyramid_pixels`)."""
        pixels, chips = defaultdict(int), defaultdict(list)
        for k, views in enumerate(views_per_scale):
            for v in views:
                if v.image_index == image_index:
                    pixels[k] += v.pixels
                    chips[k].append(list(v.box))
        num = len(views_per_scale)
        return ImageStats(
            pixels_per_scale=[pixels[k] for k in range(num)],
            chips_per_scale=[len(chips[k]) for k in range(num)],
            chip_boxes_per_scale=[chips[k] for k in range(num)],
            pyramid_pixels_per_scale=(
                self.pyramid_pixels(image_hw) if pyramid_pixels_per_scale is None else pyramid_pixels_per_scale
            ),
        )


def _split_by_image(views: Sequence[View], num_images: int) -> List[List[int]]:
    """Per image, the indices of its views in ``views``."""
    out: List[List[int]] = [[] for _ in range(num_images)]
    for j, v in enumerate(views):
        out[v.image_index].append(j)
    return out
