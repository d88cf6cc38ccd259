"""What every AutoFocus meta-architecture shares: the FocusPixel head on one backbone feature, its
training loss, and the pipeline's interface (:class:`autofocus_d2.inference.FocusDetector`)."""
from typing import Any, Dict, List, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances
from torch import nn

from ..inference.pipeline import build_autofocus_pipeline
from .focus_head import build_focus_head, focus_pixel_loss, resolve_focus_feature
from .focus_labels import focus_pixel_targets
from .sniper_heads import split_ignored

__all__ = ["FocusDetectorMixin"]


class FocusDetectorMixin:
    """
    Mixed into a Detectron2 meta-architecture that has ``backbone``, ``pixel_mean`` and
    ``pixel_std`` (GeneralizedRCNN, RetinaNet). The subclass calls :meth:`init_focus` in its
    ``__init__``, adds :meth:`focus_config` to its ``from_config`` and implements ``detect``.

    Public entries: ``forward`` in eval mode runs the pipeline; :meth:`autofocus_inference` does the
    same and can return per-view details; :meth:`focus_losses` is the training loss.
    """

    def init_focus(
        self,
        *,
        focus_head: nn.Module,
        focus_in_feature: str,
        focus_loss_weight: float = 1.0,
        focus_small_range: Sequence[float] = (5.0, 64.0),
        focus_ignore_max: float = 90.0,
        focus_ignore_ignored_boxes: bool = False,
        pipeline=None,
    ) -> None:
        """
        Args:
            focus_head: maps the ``focus_in_feature`` map (B, C, H, W) to logits (B, 2, H, W).
            focus_in_feature: name of the backbone output the head reads.
            focus_loss_weight: weight of ``loss_focus``.
            focus_small_range, focus_ignore_max: label size ranges of :func:`focus_pixel_targets`,
                in input-image pixels.
            focus_ignore_ignored_boxes: ignore the FocusPixel cells of ground truth marked
                ``gt_ignore`` (else they are labelled by size like any box, as the official code).
            pipeline: called as ``pipeline(model, batched_inputs)`` in eval mode (see
                autofocus_d2.inference.pipeline); None runs the plain detector's inference instead.
        """
        self.focus_head = focus_head
        self.focus_in_feature = focus_in_feature
        self.focus_stride = self.backbone.output_shape()[focus_in_feature].stride
        self.focus_loss_weight = focus_loss_weight
        self.focus_small_range = tuple(focus_small_range)
        self.focus_ignore_max = focus_ignore_max
        self.focus_ignore_ignored_boxes = focus_ignore_ignored_boxes
        self.pipeline = pipeline

    @staticmethod
    def focus_config(cfg, shapes: Dict[str, ShapeSpec]) -> Dict[str, Any]:
        """The :meth:`init_focus` arguments from ``cfg`` (MODEL.FOCUS_HEAD, MODEL.AUTOFOCUS)."""
        in_feature = resolve_focus_feature(cfg.MODEL.FOCUS_HEAD.IN_FEATURE, shapes)
        return {
            "focus_head": build_focus_head(cfg, shapes[in_feature]),
            "focus_in_feature": in_feature,
            "focus_loss_weight": cfg.MODEL.FOCUS_HEAD.LOSS_WEIGHT,
            "focus_small_range": cfg.MODEL.FOCUS_HEAD.SMALL_RANGE,
            "focus_ignore_max": cfg.MODEL.FOCUS_HEAD.IGNORE_MAX,
            "focus_ignore_ignored_boxes": cfg.MODEL.FOCUS_HEAD.IGNORED_BOX_LABELS == "ignore",
            "pipeline": build_autofocus_pipeline(cfg),
        }

    # ---------------------------------------------------------------- the pipeline's interface
    @property
    def input_channels(self) -> int:
        """Channels of an input image (the length of MODEL.PIXEL_MEAN)."""
        return self.pixel_mean.shape[0]

    def normalize(self, images: Sequence[torch.Tensor]) -> ImageList:
        """Float (C, h, w) images on ``self.device`` -> normalized batch padded to the backbone's
        size divisibility (Detectron2's ``preprocess_image`` without the dict inputs)."""
        return ImageList.from_tensors(
            [(x - self.pixel_mean) / self.pixel_std for x in images], self.backbone.size_divisibility
        )

    def focus_probabilities(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """FocusPixel probabilities (B, Hf, Wf) of backbone ``features``."""
        return self.focus_head(features[self.focus_in_feature]).softmax(dim=1)[:, 1]

    def autofocus_inference(
        self, batched_inputs: List[Dict[str, Any]], with_details: bool = False
    ) -> List[Dict[str, Any]]:
        """The AutoFocus pipeline on ``batched_inputs`` (Detectron2's input dicts); the outputs of
        eval-mode ``forward``, plus ``autofocus_details`` per image with ``with_details`` (see
        CoarseToFinePipeline.__call__)."""
        if self.pipeline is None:
            raise ValueError("this model was built without an AutoFocus pipeline (pipeline=None)")
        return self.pipeline(self, batched_inputs, with_details=with_details)

    # ---------------------------------------------------------------- training
    def focus_losses(
        self,
        features: Dict[str, torch.Tensor],
        gt_instances: List[Instances],
        image_sizes: List[Tuple[int, int]],
    ) -> torch.Tensor:
        """Unweighted FocusPixel loss of a batch; gt boxes and image_sizes in the input-image frame."""
        logits = self.focus_head(features[self.focus_in_feature])
        feature_hw = tuple(logits.shape[-2:])
        targets = []
        for inst, size in zip(gt_instances, image_sizes):
            boxes, ignored = inst.gt_boxes, None
            if self.focus_ignore_ignored_boxes:
                valid, ignored = split_ignored(inst)
                boxes = valid.gt_boxes
            targets.append(
                focus_pixel_targets(
                    boxes,
                    image_hw=size,
                    feature_hw=feature_hw,
                    stride=self.focus_stride,
                    small_range=self.focus_small_range,
                    ignore_max=self.focus_ignore_max,
                    ignored_boxes=ignored,
                )
            )
        return focus_pixel_loss(logits, targets)
