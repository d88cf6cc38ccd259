"""
SNIPER's ignored ground truth in Detectron2's RPN and ROI heads.

A SNIPER training chip keeps every box it overlaps, but only the boxes inside the chip's valid size
range are trained; the others ("ignored" boxes) must not be learned as background either. Ground
truth arrives as Detectron2 ``Instances`` with ``gt_boxes``, ``gt_classes`` and a bool field
``gt_ignore`` (N,): True marks an ignored box. All boxes are in the frame of the input image (the
chip at its training scale, as the network sees it). The rules, as in the official SNIPER code:

* RPN: anchors are labelled and sampled against the valid boxes only (Detectron2's own matching and
  sampling), then every anchor whose max IoU with an ignored box is above ``ignore_iou`` gets label
  -1 (no objectness and no regression loss), whatever its label was.
* ROI heads: proposals are labelled and sampled against the valid boxes only (ignored boxes are not
  added as ground-truth proposals), then the sampled background proposals whose max IoU with an
  ignored box is above ``ignore_iou`` are removed from the batch. Foreground proposals stay.

Ground truth without a ``gt_ignore`` field gives exactly Detectron2's labels, so the classes here
are drop-in replacements of ``RPN``, ``StandardROIHeads`` and ``Res5ROIHeads``.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads, StandardROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage
from detectron2.utils.memory import retry_if_cuda_oom
from torch import nn

from ..config_checks import check_ignore_iou

__all__ = [
    "require_ignore_support",
    "split_ignored",
    "ignored_overlap_mask",
    "SNIPERRPN",
    "SNIPERROIHeadsMixin",
    "SNIPERStandardROIHeads",
    "SNIPERRes5ROIHeads",
]


def split_ignored(instances: Instances) -> Tuple[Instances, Boxes]:
    """
    Split one image's ground truth into the valid instances and the ignored boxes.

    Args:
        instances: ground truth of one image with ``gt_boxes`` (N, 4) and, optionally, ``gt_ignore``
            (N,) bool (True = ignored box), boxes in the input-image frame.

    Returns:
        valid: the instances whose ``gt_ignore`` is False, every field but ``gt_ignore`` kept, in
            their original order. Without a ``gt_ignore`` field: ``instances`` itself (not a copy).
        ignored: Boxes (M, 4) of the ignored instances, same frame and device; empty without
            ``gt_ignore``.
    """
    if not instances.has("gt_ignore"):
        empty = instances.gt_boxes.tensor.new_zeros((0, 4))
        return instances, Boxes(empty)
    ignore = instances.gt_ignore
    if not isinstance(ignore, torch.Tensor) or ignore.dtype != torch.bool:
        raise ValueError(
            f"gt_ignore must be a bool tensor (True = ignored box), got "
            f"{getattr(ignore, 'dtype', type(ignore).__name__)}"
        )
    if ignore.shape != (len(instances),):
        raise ValueError(
            f"gt_ignore has shape {tuple(ignore.shape)}; expected ({len(instances)},), one per box"
        )
    valid = instances[~ignore]
    valid.remove("gt_ignore")
    return valid, instances.gt_boxes[ignore]


def ignored_overlap_mask(ignored_boxes: Boxes, boxes: Boxes, ignore_iou: float) -> torch.Tensor:
    """
    Which ``boxes`` overlap an ignored box by more than ``ignore_iou``.

    Args:
        ignored_boxes: (M, 4) ignored ground-truth boxes; boxes: (R, 4) anchors or proposals, both
            in the same (input-image) frame.
        ignore_iou: IoU threshold; a box whose max IoU with the ignored boxes is strictly above it
            is marked.

    Returns:
        (R,) bool tensor on ``boxes``' device; all False when M = 0.
    """
    if len(ignored_boxes) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.tensor.device)
    iou = retry_if_cuda_oom(pairwise_iou)(ignored_boxes, boxes)  # (M, R)
    return (iou.max(dim=0).values > ignore_iou).to(device=boxes.tensor.device)


def _ignore_iou_from_config(cfg) -> float:
    if "SNIPER" not in cfg.MODEL or "IGNORE_IOU" not in cfg.MODEL.SNIPER:
        raise KeyError(
            "MODEL.SNIPER.IGNORE_IOU is missing from the config: call "
            "autofocus_d2.add_autofocus_config(cfg) before merging a config that uses SNIPER heads"
        )
    return cfg.MODEL.SNIPER.IGNORE_IOU


class _IgnoreIoU:
    """Adds ``ignore_iou`` (``MODEL.SNIPER.IGNORE_IOU``) to a Detectron2 head built with
    ``from_config(cfg, input_shape)``; put it before that head class in the bases."""

    @configurable
    def __init__(self, *, ignore_iou: float = 0.3, **kwargs):
        """
        Args:
            ignore_iou: an anchor (RPN) or sampled background proposal (ROI heads) whose max IoU
                with an ignored box is above this gives no loss.
            kwargs: the arguments of the Detectron2 head class.
        """
        super().__init__(**kwargs)
        self.ignore_iou = check_ignore_iou(ignore_iou)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        ret["ignore_iou"] = _ignore_iou_from_config(cfg)
        return ret


@PROPOSAL_GENERATOR_REGISTRY.register()
class SNIPERRPN(_IgnoreIoU, RPN):
    """
    Detectron2's :class:`RPN` that gives no loss to anchors overlapping an ignored ground-truth box
    (``gt_ignore`` True) by more than ``ignore_iou``. See the module docstring for the rule.
    """

    supports_ignored_boxes = True

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            anchors: anchors of each feature level, (Hi*Wi*A, 4) each, in the input-image frame.
            gt_instances: ground truth of each image, with an optional ``gt_ignore`` field.

        Returns:
            As :meth:`RPN.label_and_sample_anchors`: per image, labels (R,) in {-1, 0, 1} over the
            R = sum(Hi*Wi*A) anchors, and the matched valid gt boxes (R, 4) (meaningful only where
            the label is 1). Anchors overlapping an ignored box by more than ``ignore_iou`` are -1.
        """
        valid, ignored = zip(*[split_ignored(x) for x in gt_instances])
        gt_labels, matched_gt_boxes = super().label_and_sample_anchors(anchors, list(valid))
        all_anchors = Boxes.cat(anchors)
        for labels_i, ignored_i in zip(gt_labels, ignored):
            labels_i[ignored_overlap_mask(ignored_i, all_anchors, self.ignore_iou)] = -1
        return gt_labels, matched_gt_boxes

    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """
        :meth:`RPN.predict_proposals` with the same result, faster: Detectron2 decodes the deltas
        of every anchor and then keeps the ``pre_nms_topk`` best of each level; here the best
        anchors of each level are picked by objectness first and only they are decoded (what the
        decoding cost: docs/inference.md, "Where the time goes"). Under tracing
        the stock path is kept (its top-k count depends on the traced input size).
        """
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().predict_proposals(anchors, pred_objectness_logits, pred_anchor_deltas, image_sizes)
        topk = self.pre_nms_topk[self.training]
        with torch.no_grad():
            logits, proposals = [], []
            for anchors_i, logits_i, deltas_i in zip(anchors, pred_objectness_logits, pred_anchor_deltas):
                n, num_anchors = logits_i.shape
                box_dim = anchors_i.tensor.size(1)
                top_logits, idx = logits_i.topk(min(topk, num_anchors), dim=1)
                deltas = deltas_i.gather(1, idx.unsqueeze(-1).expand(-1, -1, box_dim))
                boxes = self.box2box_transform.apply_deltas(
                    deltas.reshape(-1, box_dim), anchors_i.tensor[idx].reshape(-1, box_dim)
                )
                logits.append(top_logits)
                proposals.append(boxes.view(n, -1, box_dim))
            return find_top_rpn_proposals(
                proposals,
                logits,
                image_sizes,
                self.nms_thresh,
                topk,
                self.post_nms_topk[self.training],
                self.min_box_size,
                self.training,
            )


class SNIPERROIHeadsMixin(_IgnoreIoU):
    """
    Mixin for Detectron2 ROI heads (put it before the ROI heads class in the bases): proposals are
    labelled against the valid ground truth only, and sampled background proposals overlapping an
    ignored box by more than ``ignore_iou`` are dropped. It overrides ``label_and_sample_proposals``
    and ``from_config(cfg, input_shape)``, so it fits heads that label their proposals through
    that method once per forward (StandardROIHeads, Res5ROIHeads).
    """

    supports_ignored_boxes = True

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """
        Args:
            proposals: per image, ``proposal_boxes`` (R, 4) (and ``objectness_logits``) in the
                input-image frame.
            targets: ground truth of each image, with an optional ``gt_ignore`` field.

        Returns:
            As :meth:`ROIHeads.label_and_sample_proposals` run on the valid ground truth, minus the
            background proposals (``gt_classes == num_classes``) that overlap an ignored box by more
            than ``ignore_iou``. No ``gt_ignore`` field is carried over.
        """
        valid, ignored = zip(*[split_ignored(x) for x in targets])
        sampled = super().label_and_sample_proposals(proposals, list(valid))
        kept = []
        num_dropped = []
        for proposals_i, ignored_i in zip(sampled, ignored):
            background = proposals_i.gt_classes == self.num_classes
            drop = background & ignored_overlap_mask(
                ignored_i, proposals_i.proposal_boxes, self.ignore_iou
            )
            num_dropped.append(int(drop.sum()))
            kept.append(proposals_i[~drop] if num_dropped[-1] else proposals_i)
        get_event_storage().put_scalar("roi_head/num_ignored_bg_samples", np.mean(num_dropped))
        return kept


@ROI_HEADS_REGISTRY.register()
class SNIPERStandardROIHeads(SNIPERROIHeadsMixin, StandardROIHeads):
    """Detectron2's :class:`StandardROIHeads` with SNIPER's ignored boxes (see the mixin)."""


@ROI_HEADS_REGISTRY.register()
class SNIPERRes5ROIHeads(SNIPERROIHeadsMixin, Res5ROIHeads):
    """Detectron2's :class:`Res5ROIHeads` (C4) with SNIPER's ignored boxes (see the mixin)."""


def require_ignore_support(proposal_generator: Optional[nn.Module], roi_heads: Optional[nn.Module]) -> None:
    """
    SNIPER chips carry ignored ground truth (``gt_ignore``), which stock Detectron2 heads would
    train as objects. Raise ValueError naming the key unless the proposal generator (None:
    precomputed proposals, no anchors to label) and the ROI heads declare ``supports_ignored_boxes``
    (the SNIPER variants above). The one check of this rule: AutoFocusRCNN calls it when built for
    SNIPER chip training.
    """
    for key, module in (("MODEL.PROPOSAL_GENERATOR.NAME", proposal_generator), ("MODEL.ROI_HEADS.NAME", roi_heads)):
        if module is not None and not getattr(module, "supports_ignored_boxes", False):
            raise ValueError(
                f"SNIPER chip training (INPUT.SNIPER.ENABLED, sniper_training) gives ignored boxes; {key} "
                f"builds {type(module).__name__}, which would train them as objects. Use an ignore-aware "
                "variant (SNIPERRPN, SNIPERStandardROIHeads, SNIPERRes5ROIHeads) or set INPUT.SNIPER.ENABLED False"
            )
