"""``AutoFocusRCNN``: Detectron2's GeneralizedRCNN with a FocusPixel head."""
import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList, Instances
from torch import nn

from ..config import validate_autofocus_config
from ..inference.pipeline import build_autofocus_pipeline
from .focus_head import build_focus_head, focus_pixel_loss, resolve_focus_feature
from .focus_labels import focus_pixel_targets

__all__ = ["AutoFocusRCNN"]


@contextlib.contextmanager
def _capped_topk(generator: nn.Module, cap: int):
    """Temporarily cap the test-time ``pre_nms_topk``/``post_nms_topk`` of Detectron2's RPN."""
    saved = {}
    for attr in ("pre_nms_topk", "post_nms_topk"):
        table = getattr(generator, attr, None)
        if not isinstance(table, dict) or False not in table:
            raise ValueError(
                "MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX needs a proposal generator with Detectron2 RPN's "
                f"{attr} table; {type(generator).__name__} has none (set PROPOSALS_PER_MPIX to 0)"
            )
        saved[attr] = table[False]
        table[False] = min(table[False], cap)
    try:
        yield
    finally:
        for attr, value in saved.items():
            getattr(generator, attr)[False] = value


@META_ARCH_REGISTRY.register()
class AutoFocusRCNN(GeneralizedRCNN):
    """
    GeneralizedRCNN (any backbone, proposal generator and ROI heads Detectron2 builds) plus a
    FocusPixel head on one backbone feature. Training adds ``loss_focus`` to Detectron2's losses.
    A stock GeneralizedRCNN checkpoint loads into it; only ``focus_head.*`` is new.

    In eval mode, ``forward`` runs the AutoFocus coarse-to-fine ``pipeline`` (chip policy picked by
    config) and returns Detectron2 outputs in the original image frame; :meth:`inference` stays
    GeneralizedRCNN's single pass over the given image.
    """

    @configurable
    def __init__(
        self,
        *,
        focus_head: nn.Module,
        focus_in_feature: str,
        focus_loss_weight: float = 1.0,
        focus_small_range: Sequence[float] = (5.0, 64.0),
        focus_ignore_max: float = 90.0,
        pipeline=None,
        **kwargs,
    ):
        """
        Args:
            focus_head: maps the ``focus_in_feature`` map (B, C, H, W) to logits (B, 2, H, W).
            focus_in_feature: name of the backbone output the head reads.
            focus_loss_weight: weight of ``loss_focus``.
            focus_small_range, focus_ignore_max: label size ranges of :func:`focus_pixel_targets`,
                in input-image pixels.
            pipeline: called as ``pipeline(model, batched_inputs)`` in eval mode (see
                autofocus_d2.inference.pipeline); None runs GeneralizedRCNN's inference instead.
            kwargs: the arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.focus_head = focus_head
        self.focus_in_feature = focus_in_feature
        self.focus_stride = self.backbone.output_shape()[focus_in_feature].stride
        self.focus_loss_weight = focus_loss_weight
        self.focus_small_range = tuple(focus_small_range)
        self.focus_ignore_max = focus_ignore_max
        self.pipeline = pipeline

    @classmethod
    def from_config(cls, cfg):
        validate_autofocus_config(cfg)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_feature = resolve_focus_feature(cfg.MODEL.FOCUS_HEAD.IN_FEATURE, shapes)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "roi_heads": build_roi_heads(cfg, shapes),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "focus_head": build_focus_head(cfg, shapes[in_feature]),
            "focus_in_feature": in_feature,
            "focus_loss_weight": cfg.MODEL.FOCUS_HEAD.LOSS_WEIGHT,
            "focus_small_range": cfg.MODEL.FOCUS_HEAD.SMALL_RANGE,
            "focus_ignore_max": cfg.MODEL.FOCUS_HEAD.IGNORE_MAX,
            "pipeline": build_autofocus_pipeline(cfg),
        }

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Training: Detectron2's losses plus ``loss_focus``. Eval: the AutoFocus pipeline; each
        output dict holds ``instances`` (original image frame, or ``height``/``width`` of the
        input) and ``autofocus`` (pixels and chips per scale, and the full pyramid's pixels)."""
        if not self.training:
            if self.pipeline is None:
                return self.inference(batched_inputs)
            return self.pipeline(self, batched_inputs)
        images = self.preprocess_image(batched_inputs)
        if "instances" not in batched_inputs[0]:
            raise ValueError("AutoFocusRCNN training needs 'instances' (ground truth) in every input")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)

        if self.proposal_generator is not None:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        else:
            proposals = [x["proposals"].to(self.device) for x in batched_inputs]
            proposal_losses = {}
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)

        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        losses["loss_focus"] = self.focus_loss_weight * self.focus_losses(
            features, gt_instances, images.image_sizes
        )
        return losses

    def focus_losses(
        self,
        features: Dict[str, torch.Tensor],
        gt_instances: List[Instances],
        image_sizes: List[Tuple[int, int]],
    ) -> torch.Tensor:
        """Unweighted FocusPixel loss of a batch; gt boxes and image_sizes in the input-image frame."""
        logits = self.focus_head(features[self.focus_in_feature])
        feature_hw = tuple(logits.shape[-2:])
        targets = [
            focus_pixel_targets(
                inst.gt_boxes,
                image_hw=size,
                feature_hw=feature_hw,
                stride=self.focus_stride,
                small_range=self.focus_small_range,
                ignore_max=self.focus_ignore_max,
            )
            for inst, size in zip(gt_instances, image_sizes)
        ]
        return focus_pixel_loss(logits, targets)

    def _proposal_budget(self, max_proposals: Optional[int]):
        if max_proposals is None:
            return contextlib.nullcontext()
        return _capped_topk(self.proposal_generator, int(max_proposals))

    def detect(
        self, images: ImageList, with_focus: bool = True, max_proposals: Optional[int] = None
    ) -> Tuple[List[Instances], Optional[torch.Tensor]]:
        """
        One detector pass over a normalized, padded batch. ``max_proposals``, if given, caps the
        RPN's test-time pre- and post-NMS top-k for this pass (never raises them).

        Returns:
            per-image Instances with boxes in the frame of each (unpadded) input image of
            ``images``, and FocusPixel probabilities (B, Hf, Wf) on the padded grid of stride
            ``self.focus_stride`` (None if ``with_focus`` is False).
        """
        if self.proposal_generator is None:
            raise ValueError("AutoFocus inference needs a proposal generator (MODEL.PROPOSAL_GENERATOR)")
        features = self.backbone(images.tensor)
        with self._proposal_budget(max_proposals):
            proposals, _ = self.proposal_generator(images, features, None)
        results, _ = self.roi_heads(images, features, proposals, None)
        focus = None
        if with_focus:
            logits = self.focus_head(features[self.focus_in_feature])
            focus = logits.softmax(dim=1)[:, 1]
        return results, focus
