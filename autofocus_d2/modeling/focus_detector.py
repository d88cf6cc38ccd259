"""What every AutoFocus meta-architecture shares: the FocusPixel head on one backbone feature, its
training loss, the pipeline's interface (:class:`autofocus_d2.inference.FocusDetector`), and
retrofitting (training only the head on a trained detector, MODEL.FOCUS_HEAD.TRAIN_ONLY)."""
import contextlib
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import ImageList, Instances
from torch import nn

from ..config_checks import check, check_at_least, check_choice, check_focus_label_range
from ..pipeline_registry import build_autofocus_pipeline
from .focus_head import build_focus_head, focus_pixel_loss, resolve_focus_feature
from ..structures.focus_labels import focus_pixel_targets, focus_size_range
from .sniper_heads import split_ignored

__all__ = ["FocusDetectorMixin", "split_focus_arguments", "focus_zoom_steps"]

# The keyword arguments of FocusDetectorMixin.init_focus.
FOCUS_ARGUMENTS = (
    "focus_head",
    "focus_in_feature",
    "focus_loss_weight",
    "focus_small_range",
    "focus_small_min_frame",
    "focus_ignore_max",
    "focus_ignore_ignored_boxes",
    "pipeline",
    "focus_train_only",
)


def split_focus_arguments(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Pop the :meth:`FocusDetectorMixin.init_focus` arguments out of a meta-architecture's
    keyword arguments, in place; what is left are the detector's own."""
    return {k: kwargs.pop(k) for k in FOCUS_ARGUMENTS if k in kwargs}

logger = logging.getLogger(__name__)


class FocusDetectorMixin:
    """
    Mixed into a Detectron2 meta-architecture that has ``backbone``, ``pixel_mean`` and
    ``pixel_std`` (GeneralizedRCNN, RetinaNet). The subclass calls :meth:`init_focus` in its
    ``__init__``, adds :meth:`focus_config` to its ``from_config`` and implements ``detect``; its
    training ``forward`` returns :meth:`focus_only_losses` when ``self.focus_train_only`` is set.

    Public entries: ``forward`` in eval mode runs the pipeline; :meth:`autofocus_inference` does the
    same and can return per-view details; :meth:`focus_losses` is the training loss.

    Retrofit (``focus_train_only``): every parameter outside ``focus_head`` gets
    ``requires_grad=False``, every module outside ``focus_head`` stays in eval mode whatever
    ``train()`` is called with (BatchNorm statistics do not move), and the training loss is
    ``loss_focus`` alone on backbone features computed under ``torch.no_grad``. The detector's
    state_dict (parameters and buffers) is thus unchanged by training.
    """

    def init_focus(
        self,
        *,
        focus_head: nn.Module,
        focus_in_feature: str,
        focus_loss_weight: float = 1.0,
        focus_small_range: Sequence[float] = (5.0, 64.0),
        focus_small_min_frame: str = "input",
        focus_ignore_max: float = 90.0,
        focus_ignore_ignored_boxes: bool = False,
        pipeline=None,
        focus_train_only: bool = False,
    ) -> None:
        """
        Args:
            focus_head: maps the ``focus_in_feature`` map (B, C, H, W) to logits (B, 2, H, W).
            focus_in_feature: name of the backbone output the head reads.
            focus_loss_weight: weight of ``loss_focus``.
            focus_small_range, focus_ignore_max: label size ranges of :func:`focus_pixel_targets`,
                in input-image pixels.
            focus_small_min_frame: frame of ``focus_small_range[0]`` (:func:`focus_size_range`):
                "input" or "next_scale" (then each training input's ``focus_zoom_step`` is used).
            focus_ignore_ignored_boxes: ignore the FocusPixel cells of ground truth marked
                ``gt_ignore`` (else they are labelled by size like any box, as the official code).
            pipeline: called as ``pipeline(model, batched_inputs)`` in eval mode (see
                autofocus_d2.pipeline_registry, autofocus_d2.inference.pipeline); None runs the plain detector's inference instead.
            focus_train_only: retrofit: freeze the detector and train only ``focus_head`` (see the
                class docstring). Call :meth:`init_focus` after every detector module is built.
        """
        check_at_least(focus_loss_weight, 0, "focus_loss_weight")
        check_focus_label_range(focus_small_range, focus_ignore_max, "focus_small_range", "focus_ignore_max")
        check_choice(focus_train_only, (True, False), "MODEL.FOCUS_HEAD.TRAIN_ONLY (focus_train_only)")
        check(not focus_train_only or focus_loss_weight > 0, "MODEL.FOCUS_HEAD.LOSS_WEIGHT (focus_loss_weight)",
              "is 0 while MODEL.FOCUS_HEAD.TRAIN_ONLY (focus_train_only) is on: nothing would be trained")
        check(focus_in_feature in self.backbone.output_shape(), "focus_in_feature",
              f"{focus_in_feature!r} is not a backbone output; the backbone produces "
              f"{sorted(self.backbone.output_shape())}")
        self.focus_head = focus_head
        self.focus_in_feature = focus_in_feature
        self.focus_stride = self.backbone.output_shape()[focus_in_feature].stride
        self.focus_loss_weight = focus_loss_weight
        self.focus_small_range = tuple(focus_small_range)
        focus_size_range(self.focus_small_range, 1.0, focus_small_min_frame)  # checks the frame
        self.focus_small_min_frame = focus_small_min_frame
        self.focus_ignore_max = focus_ignore_max
        self.focus_ignore_ignored_boxes = focus_ignore_ignored_boxes
        self.pipeline = pipeline
        self.focus_train_only = bool(focus_train_only)
        if self.focus_train_only:
            for name, param in self.named_parameters():
                if not name.startswith("focus_head."):
                    param.requires_grad_(False)
            self.train(self.training)  # puts the detector's modules in eval mode now

    @staticmethod
    def focus_config(cfg, shapes: Dict[str, ShapeSpec]) -> Dict[str, Any]:
        """The :meth:`init_focus` arguments from ``cfg`` (MODEL.FOCUS_HEAD, MODEL.AUTOFOCUS)."""
        in_feature = resolve_focus_feature(cfg.MODEL.FOCUS_HEAD.IN_FEATURE, shapes)
        return {
            "focus_head": build_focus_head(cfg, shapes[in_feature]),
            "focus_in_feature": in_feature,
            "focus_loss_weight": cfg.MODEL.FOCUS_HEAD.LOSS_WEIGHT,
            "focus_small_range": cfg.MODEL.FOCUS_HEAD.SMALL_RANGE,
            "focus_small_min_frame": cfg.MODEL.FOCUS_HEAD.SMALL_MIN_FRAME,
            "focus_ignore_max": cfg.MODEL.FOCUS_HEAD.IGNORE_MAX,
            "focus_ignore_ignored_boxes": cfg.MODEL.FOCUS_HEAD.IGNORED_BOX_LABELS == "ignore",
            "pipeline": build_autofocus_pipeline(cfg),
            "focus_train_only": _retrofit_switch(cfg),
        }

    # ---------------------------------------------------------------- the pipeline's interface
    @property
    def input_channels(self) -> int:
        """Channels of an input image (the length of MODEL.PIXEL_MEAN)."""
        return self.pixel_mean.shape[0]

    @property
    def size_divisibility(self) -> int:
        """The backbone's padding multiple (what :meth:`normalize` pads a batch to)."""
        return self.backbone.size_divisibility

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
    def train(self, mode: bool = True):
        """``nn.Module.train``; in retrofit mode every module outside ``focus_head`` stays in eval
        mode (``self.training`` still follows ``mode``, so ``forward`` gives the training loss)."""
        super().train(mode)
        if getattr(self, "focus_train_only", False):
            for name, child in self.named_children():
                if name != "focus_head":
                    child.train(False)
        return self

    def focus_only_losses(self, batched_inputs: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        """The retrofit training loss: ``{"loss_focus": weight * focus_losses}`` on Detectron2's
        input dicts (each with ``image`` and ``instances``, boxes in the frame of ``image``); the
        backbone runs under ``torch.no_grad`` and no detection head runs."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(f"{type(self).__name__} training needs 'instances' (ground truth) in every input")
        images = self.normalize([x["image"].to(self.device) for x in batched_inputs])
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        with torch.no_grad():
            features = self.backbone(images.tensor)
        loss = self.focus_losses(features, gt_instances, images.image_sizes, focus_zoom_steps(batched_inputs))
        return {"loss_focus": self.focus_loss_weight * loss}

    def with_focus_loss(
        self, detector_forward: Callable[[List[Dict[str, Any]]], Dict[str, torch.Tensor]],
        batched_inputs: List[Dict[str, Any]],
    ) -> Dict[str, torch.Tensor]:
        """Training: the losses of ``detector_forward`` (the Detectron2 meta-architecture's own
        training ``forward``, e.g. ``super().forward``) plus ``loss_focus`` on the backbone features
        that pass computed (caught by a forward hook on ``self.backbone``, so the backbone runs once
        and everything Detectron2's forward does, ``vis_period`` included, is kept)."""
        if any("instances" not in x for x in batched_inputs):
            raise ValueError(f"{type(self).__name__} training needs 'instances' (ground truth) in every input")
        with _backbone_outputs(self.backbone) as outputs:
            losses = detector_forward(batched_inputs)
        if len(outputs) != 1:
            raise RuntimeError(f"the detector's training forward ran the backbone {len(outputs)} times; expected once")
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        image_sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]  # as preprocess_image's
        losses["loss_focus"] = self.focus_loss_weight * self.focus_losses(
            outputs[0], gt_instances, image_sizes, focus_zoom_steps(batched_inputs)
        )
        return losses

    def focus_losses(
        self,
        features: Dict[str, torch.Tensor],
        gt_instances: List[Instances],
        image_sizes: List[Tuple[int, int]],
        zoom_steps: Optional[Sequence[float]] = None,
    ) -> torch.Tensor:
        """Unweighted FocusPixel loss of a batch; gt boxes and image_sizes in the input-image frame;
        ``zoom_steps``: per image, the next scale's zoom over the input's (:func:`focus_zoom_steps`;
        None = 1 each), used by ``focus_small_min_frame`` "next_scale"."""
        logits = self.focus_head(features[self.focus_in_feature])
        feature_hw = tuple(logits.shape[-2:])
        targets = []
        steps = [1.0] * len(gt_instances) if zoom_steps is None else list(zoom_steps)
        for inst, size, step in zip(gt_instances, image_sizes, steps):
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
                    small_range=focus_size_range(self.focus_small_range, step, self.focus_small_min_frame),
                    ignore_max=self.focus_ignore_max,
                    ignored_boxes=ignored,
                )
            )
        return focus_pixel_loss(logits, targets)


@contextlib.contextmanager
def _backbone_outputs(backbone: nn.Module):
    """Collect the outputs of every ``backbone`` call made inside the block (a forward hook)."""
    outputs: List[Dict[str, torch.Tensor]] = []
    handle = backbone.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def focus_zoom_steps(batched_inputs: List[Dict[str, Any]]) -> List[float]:
    """Per input, its ``focus_zoom_step`` (the SNIPER mapper's: the next training scale's zoom over
    the chip's), 1.0 where an input has none (whole-image training: the paper's label rule)."""
    return [float(x.get("focus_zoom_step", 1.0)) for x in batched_inputs]


def _retrofit_switch(cfg) -> bool:
    """MODEL.FOCUS_HEAD.TRAIN_ONLY. Empty MODEL.WEIGHTS is allowed (tests and smoke runs train the
    head on a random detector) but logged, since a retrofit of random weights is rarely meant."""
    train_only = cfg.MODEL.FOCUS_HEAD.TRAIN_ONLY  # checked by init_focus
    if train_only is True and not cfg.MODEL.WEIGHTS:
        logger.warning(
            "MODEL.FOCUS_HEAD.TRAIN_ONLY is on but MODEL.WEIGHTS is empty: only the FocusPixel head "
            "trains, on a detector frozen at its random initialization"
        )
    return train_only
