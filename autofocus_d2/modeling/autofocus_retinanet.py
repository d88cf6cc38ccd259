"""``AutoFocusRetinaNet``: Detectron2's RetinaNet (a one-stage detector) with a FocusPixel head.

Only public behaviour that Detectron2 0.6 and upstream main's RetinaNet share is used:
``preprocess_image``, ``backbone``, ``head``, ``head_in_features``, ``forward_training``,
``forward_inference``, ``label_anchors`` and the four test-time attributes ``test_score_thresh``,
``test_topk_candidates``, ``test_nms_thresh``, ``max_detections_per_image``.
"""
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes, ImageList, Instances

from ..config import validate_autofocus_config
from ..config_checks import check_ignore_iou
from .focus_detector import FocusDetectorMixin, split_focus_arguments
from .pass_settings import raw_dense_detector
from .sniper_heads import ignored_overlap_mask, split_ignored

__all__ = ["AutoFocusRetinaNet"]


@META_ARCH_REGISTRY.register()
class AutoFocusRetinaNet(FocusDetectorMixin, RetinaNet):
    """
    Detectron2's RetinaNet plus a FocusPixel head on one backbone feature (default: the stride-16
    one, p4 of RetinaNet's FPN). Training adds ``loss_focus`` to RetinaNet's ``loss_cls`` and
    ``loss_box_reg``. A stock RetinaNet checkpoint loads into it; only ``focus_head.*`` is new.
    With ``focus_train_only`` (MODEL.FOCUS_HEAD.TRAIN_ONLY) training gives ``loss_focus`` only and
    the detector is frozen (retrofit, see :class:`FocusDetectorMixin`).

    SNIPER chip training: ground truth may carry ``gt_ignore`` (boxes out of the chip's valid
    range). Anchors are labelled against the valid boxes only (RetinaNet's own matcher), then every
    anchor whose max IoU with an ignored box is above ``ignore_iou`` gets label -1 (no
    classification and no regression loss), whatever its label was, as SNIPERRPN does.

    In eval mode, ``forward`` runs the AutoFocus coarse-to-fine ``pipeline`` (as AutoFocusRCNN)
    and returns Detectron2 outputs in the original image frame. A one-stage detector has no
    proposals: MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX must be 0.
    """

    supports_ignored_boxes = True

    @configurable
    def __init__(self, *, ignore_iou: float = 0.3, **kwargs):
        """
        Args:
            ignore_iou: an anchor whose max IoU with an ignored ground-truth box is above this
                gives no loss (MODEL.SNIPER.IGNORE_IOU), in (0, 1].
            kwargs: the arguments of :meth:`FocusDetectorMixin.init_focus` (``focus_head``, ...,
                ``pipeline``, ``focus_train_only``) and of Detectron2's :class:`RetinaNet`.
        """
        focus = split_focus_arguments(kwargs)
        super().__init__(**kwargs)
        self.ignore_iou = check_ignore_iou(ignore_iou)
        self.init_focus(**focus)

    @classmethod
    def from_config(cls, cfg):
        validate_autofocus_config(cfg)
        if cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX > 0:
            raise ValueError(
                "Invalid config MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX: "
                f"{cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX} > 0, but AutoFocusRetinaNet is a one-stage "
                "detector without proposals; set it to 0 (MODEL.RETINANET.TOPK_CANDIDATES_TEST bounds "
                "the candidates per feature level instead)"
            )
        ret = super().from_config(cfg)  # RetinaNet's: builds the backbone, head and anchors
        ret.update(cls.focus_config(cfg, ret["backbone"].output_shape()))
        ret["ignore_iou"] = cfg.MODEL.SNIPER.IGNORE_IOU
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Training: RetinaNet's losses plus ``loss_focus``. Eval: the AutoFocus pipeline (see
        AutoFocusRCNN.forward for the outputs), or RetinaNet's own inference without a pipeline.
        Retrofit training (``focus_train_only``): ``loss_focus`` only."""
        if not self.training:
            if self.pipeline is None:
                return super().forward(batched_inputs)
            return self.pipeline(self, batched_inputs)
        if self.focus_train_only:
            return self.focus_only_losses(batched_inputs)
        return self.with_focus_loss(super().forward, batched_inputs)

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        RetinaNet's anchor labels with SNIPER's ignored boxes.

        Args:
            anchors: per feature level, (Hi*Wi*A, 4) anchors in the input-image frame.
            gt_instances: per image, ``gt_boxes``, ``gt_classes`` and optionally ``gt_ignore`` (bool).

        Returns:
            As RetinaNet.label_anchors: per image, labels (R,) in {-1, 0..K} (K = background,
            -1 = no loss) and matched gt boxes (R, 4), R = sum of Hi*Wi*A. Without ``gt_ignore``
            the result equals RetinaNet's.
        """
        split = [split_ignored(inst) for inst in gt_instances]
        gt_labels, matched_boxes = super().label_anchors(anchors, [valid for valid, _ in split])
        all_anchors = Boxes.cat(anchors)
        for labels, (_, ignored) in zip(gt_labels, split):
            labels[ignored_overlap_mask(ignored, all_anchors, self.ignore_iou)] = -1
        return gt_labels, matched_boxes

    def detect(
        self,
        images: ImageList,
        with_focus: bool = True,
        max_proposals: Optional[int] = None,
        raw_score_thresh: Optional[float] = None,
    ) -> Tuple[List[Instances], Optional[torch.Tensor]]:
        """
        One detector pass over a normalized, padded batch. ``raw_score_thresh``, if given, makes
        this pass return raw detections (see :func:`raw_dense_detector`; a pass twin, the model
        itself is not changed). ``max_proposals`` must
        be None: a one-stage detector has no proposals to cap.

        Returns:
            per-image Instances (``pred_boxes``, ``scores``, ``pred_classes``) with boxes clipped
            to, and in the frame of, each (unpadded) input image of ``images``; and FocusPixel
            probabilities (B, Hf, Wf) on the padded grid of stride ``self.focus_stride`` (None if
            ``with_focus`` is False).
        """
        if max_proposals is not None:
            raise ValueError(
                "AutoFocusRetinaNet has no proposals to cap (max_proposals="
                f"{max_proposals}); set MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX to 0"
            )
        features = self.backbone(images.tensor)
        head_features = [features[f] for f in self.head_in_features]
        predictions = self.head(head_features)
        detector = self if raw_score_thresh is None else raw_dense_detector(self, raw_score_thresh)
        results = detector.forward_inference(images, head_features, predictions)
        for inst in results:
            inst.pred_boxes.clip(inst.image_size)  # RetinaNet leaves boxes unclipped
        return results, self.focus_probabilities(features) if with_focus else None
