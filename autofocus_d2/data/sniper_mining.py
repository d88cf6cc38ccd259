"""SNIPER negative chip mining: where a briefly trained RPN fires away from the positive chips.

For every image and training scale, the whole image is seen at that scale (tiled as the inference
pipeline tiles it: :func:`autofocus_d2.structures.tile_views` with ``MODEL.AUTOFOCUS.MAX_CHIP_SIDE``
and ``TILE_OVERLAP``, which bound memory), the RPN's best proposals are mapped back to the
ORIGINAL frame, and :func:`negative_chips` covers those no positive chip holds. The result is
the json read by ``INPUT.SNIPER.NEGATIVE_CHIPS_FILE``::

    {"version": 1, "scales": [[short, cap], ...],
     "chips": {"<image_id>": [[x0, y0, x1, y1, scale_index], ...]}}

with chips XYXY in original pixels.
"""
import logging
import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.data import detection_utils as utils

from ..config import sniper_training_scales, sniper_valid_ranges, validate_sniper_config
from ..config_checks import check_tiling
from ..structures.scale_chain import ScaleChain
from ..structures.views import crop_and_resize, tile_views
from ..utils.image_io import read_image
from .sniper_chips import negative_chips, positive_chips
from .sniper_records import NEGATIVE_CHIPS_VERSION, annotation_boxes

__all__ = ["mine_negative_chips", "rpn_proposals_at_zoom"]

logger = logging.getLogger(__name__)

_LOG_PERIOD = 20


@torch.no_grad()
def rpn_proposals_at_zoom(
    model: nn.Module, image: torch.Tensor, zoom: float, top_k: int, *, max_side: int, tile_overlap: int
) -> torch.Tensor:
    """
    The ``top_k`` RPN proposals (highest objectness first) of a whole image seen at ``zoom``.

    Where the zoomed image is longer than ``max_side`` pixels it is cut into overlapping tiles of
    at most ``max_side`` pixels a side (:func:`tile_views`, the pipeline's tiling), each resized from the original pixels (bilinear, antialiased when shrinking), normalized
    with ``model.normalize`` and run through ``model.backbone`` and
    ``model.proposal_generator``. The model must be in eval mode.

    Args:
        model: a Detectron2 R-CNN (``backbone``, ``proposal_generator``, ``normalize``).
        image (Tensor): (C, H, W) original image in the model's input format, any dtype.
        zoom (float): pixels of the scale per original pixel.
        top_k (int): number of proposals kept over all tiles.
        max_side, tile_overlap (int): pixels of the scale (MODEL.AUTOFOCUS.MAX_CHIP_SIDE,
            MODEL.AUTOFOCUS.TILE_OVERLAP).

    Returns:
        Tensor: (R, 4) float32 XYXY proposals in the original frame, R <= top_k, on the CPU.
    """
    if not (zoom > 0 and math.isfinite(zoom)):
        raise ValueError(f"zoom must be a positive finite number, got {zoom}")
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k}")
    check_tiling(max_side, tile_overlap, "max_side", "tile_overlap")
    device = model.device
    image = image.to(device=device, dtype=torch.float32)
    h, w = image.shape[-2:]
    boxes, scores = [], []
    for view in tile_views(0, 0, (0, 0, w, h), zoom, max_side, tile_overlap):
        x = crop_and_resize(image, view.box, view.out_hw)
        images = model.normalize([x])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        boxes.append(view.to_original(proposals[0].proposal_boxes.tensor))
        scores.append(proposals[0].objectness_logits)
    boxes_t, scores_t = torch.cat(boxes), torch.cat(scores)
    order = torch.argsort(scores_t, descending=True, stable=True)[:top_k]
    return boxes_t[order].float().cpu()


def mine_negative_chips(
    model: nn.Module,
    dataset_dicts: List[Dict[str, Any]],
    cfg: CfgNode,
    max_images: Optional[int] = None,
) -> Dict[str, Any]:
    """
    Mine SNIPER negative chips with ``model``'s RPN (usually briefly trained on positive chips).

    For each image (the first ``max_images`` when given) and training scale
    (``sniper_training_scales(cfg)``): the ``INPUT.SNIPER.NEGATIVE_PROPOSALS_PER_IMAGE`` best
    proposals (:func:`rpn_proposals_at_zoom`), the scale's positive chips from the non-crowd
    annotations, and :func:`negative_chips` with ``INPUT.SNIPER.NEGATIVE_MIN_PROPOSALS`` and the
    scale's valid range. The model is run in eval mode and put back in its former mode.

    Returns:
        dict: the negative-chips json content (module docstring); every mined image has an
        entry, possibly an empty list.
    """
    validate_sniper_config(cfg)
    sn, af = cfg.INPUT.SNIPER, cfg.MODEL.AUTOFOCUS
    scales = sniper_training_scales(cfg)
    ranges = sniper_valid_ranges(cfg)
    chain = ScaleChain(scales=scales)
    dicts = dataset_dicts if max_images is None else dataset_dicts[: max(0, int(max_images))]
    chips_out: Dict[str, List[List[float]]] = {}
    per_scale = [0] * len(chain)
    was_training = model.training
    model.eval()
    try:
        for i, d in enumerate(dicts):
            image = read_image(d["file_name"], format=cfg.INPUT.FORMAT, max_mpix=cfg.INPUT.MAX_IMAGE_MPIX)
            utils.check_image_size(d, image)
            image_t = torch.as_tensor(image.transpose(2, 0, 1).copy())
            hw = (image.shape[0], image.shape[1])
            gt = annotation_boxes(d)
            entry: List[List[float]] = []
            for scale, (zoom, vr) in enumerate(zip(chain.zooms(hw), ranges)):
                proposals = rpn_proposals_at_zoom(model, image_t, zoom, sn.NEGATIVE_PROPOSALS_PER_IMAGE,
                                                  max_side=af.MAX_CHIP_SIDE, tile_overlap=af.TILE_OVERLAP)
                common = dict(image_hw=hw, zoom=zoom, chip_size=sn.CHIP_SIZE, stride=sn.CHIP_STRIDE)
                pos = positive_chips(gt, valid_range=vr, **common)
                neg = negative_chips(proposals, positive_chips=pos, valid_range=vr,
                                     min_proposals=sn.NEGATIVE_MIN_PROPOSALS, **common)
                entry += [c.tolist() + [scale] for c in neg]
                per_scale[scale] += len(neg)
            chips_out[str(d["image_id"])] = entry
            if (i + 1) % _LOG_PERIOD == 0 or i + 1 == len(dicts):
                logger.info(f"Mined {i + 1}/{len(dicts)} images: negative chips per scale {per_scale}")
    finally:
        model.train(was_training)
    return {"version": NEGATIVE_CHIPS_VERSION, "scales": scales, "chips": chips_out}
