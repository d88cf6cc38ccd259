"""``AutoFocusRCNN``: Detectron2's GeneralizedRCNN with a FocusPixel head."""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import ImageList, Instances
from ..config import validate_autofocus_config
from .focus_detector import FocusDetectorMixin, split_focus_arguments
from .pass_settings import box_predictors, capped_proposal_generator, raw_roi_heads
from .sniper_heads import require_ignore_support

__all__ = ["AutoFocusRCNN"]


@META_ARCH_REGISTRY.register()
class AutoFocusRCNN(FocusDetectorMixin, GeneralizedRCNN):
    """
    GeneralizedRCNN (any backbone, proposal generator and ROI heads Detectron2 builds) plus a
    FocusPixel head on one backbone feature. Training adds ``loss_focus`` to Detectron2's losses.
    A stock GeneralizedRCNN checkpoint loads into it; only ``focus_head.*`` is new. With
    ``focus_train_only`` (MODEL.FOCUS_HEAD.TRAIN_ONLY) training gives ``loss_focus`` only and the
    detector is frozen (retrofit, see :class:`FocusDetectorMixin`).

    In eval mode, ``forward`` runs the AutoFocus coarse-to-fine ``pipeline`` (chip policy picked by
    config) and returns Detectron2 outputs in the original image frame; :meth:`inference` stays
    GeneralizedRCNN's single pass over the given image.
    """

    @configurable
    def __init__(self, *, sniper_training: bool = False, **kwargs):
        """
        Args:
            sniper_training: the model trains on SNIPER chips (INPUT.SNIPER.ENABLED), whose ground
                truth has ignored boxes: the proposal generator and ROI heads must be ignore-aware
                (:func:`require_ignore_support`, checked here).
            kwargs: the arguments of :meth:`FocusDetectorMixin.init_focus` (``focus_head``,
                ``focus_in_feature``, ..., ``pipeline``, ``focus_train_only``) and of
                :class:`GeneralizedRCNN`.
        """
        focus = split_focus_arguments(kwargs)
        super().__init__(**kwargs)
        if sniper_training:
            require_ignore_support(self.proposal_generator, self.roi_heads)
        self.init_focus(**focus)

    @classmethod
    def from_config(cls, cfg):
        validate_autofocus_config(cfg)
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        proposal_generator = build_proposal_generator(cfg, shapes)
        roi_heads = build_roi_heads(cfg, shapes)
        if cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS == "raw":
            box_predictors(roi_heads)  # fails now, naming the key, rather than at the first eval
        return {
            "backbone": backbone,
            "proposal_generator": proposal_generator,
            "roi_heads": roi_heads,
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "sniper_training": cfg.INPUT.SNIPER.ENABLED,
            **cls.focus_config(cfg, shapes),
        }

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Training: Detectron2's losses plus ``loss_focus``. Eval: the AutoFocus pipeline; each
        output dict holds ``instances`` (original image frame, or ``height``/``width`` of the
        input) and ``autofocus`` (pixels and chips per scale, and the full pyramid's pixels).
        Retrofit training (``focus_train_only``): ``loss_focus`` only."""
        if not self.training:
            if self.pipeline is None:
                return self.inference(batched_inputs)
            return self.pipeline(self, batched_inputs)
        if self.focus_train_only:
            return self.focus_only_losses(batched_inputs)
        return self.with_focus_loss(super().forward, batched_inputs)

    def detect(
        self,
        images: ImageList,
        with_focus: bool = True,
        max_proposals: Optional[int] = None,
        raw_score_thresh: Optional[float] = None,
    ) -> Tuple[List[Instances], Optional[torch.Tensor]]:
        """
        One detector pass over a normalized, padded batch. ``max_proposals``, if given, caps the
        RPN's test-time pre- and post-NMS top-k for this pass (never raises them).
        ``raw_score_thresh``, if given, makes the ROI heads return raw detections for this pass:
        every class score >= ``raw_score_thresh`` of every proposal, without per-image NMS/top-k.
        Both settings hold for this call only, on pass twins of the heads
        (:mod:`autofocus_d2.modeling.pass_settings`); the model itself is not changed.

        Returns:
            per-image Instances with boxes in the frame of each (unpadded) input image of
            ``images``, and FocusPixel probabilities (B, Hf, Wf) on the padded grid of stride
            ``self.focus_stride`` (None if ``with_focus`` is False).
        """
        if self.proposal_generator is None:
            raise ValueError("AutoFocus inference needs a proposal generator (MODEL.PROPOSAL_GENERATOR)")
        features = self.backbone(images.tensor)
        rpn = self.proposal_generator
        if max_proposals is not None:
            rpn = capped_proposal_generator(rpn, max_proposals)
        proposals, _ = rpn(images, features, None)
        roi_heads = self.roi_heads if raw_score_thresh is None else raw_roi_heads(self.roi_heads, raw_score_thresh)
        results, _ = roi_heads(images, features, proposals, None)
        return results, self.focus_probabilities(features) if with_focus else None
