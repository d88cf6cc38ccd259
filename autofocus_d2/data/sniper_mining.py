"""SNIPER negative chip mining: where a briefly trained RPN fires away from the positive chips.

For every image and training scale, the whole image is seen at that scale (in tiles of at most
``MAX_TILE_SIDE`` pixels, to bound memory), the RPN's best proposals are mapped back to the
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
from ..structures.scale_chain import ScaleChain
from ..structures.views import View, crop_and_resize, tile_box, zoomed_hw
from ..utils.image_io import read_image
from .sniper_chips import negative_chips, positive_chips
from .sniper_loader import NEGATIVE_CHIPS_VERSION, annotation_boxes

__all__ = ["mine_negative_chips", "rpn_proposals_at_zoom", "MAX_TILE_SIDE"]

logger = logging.getLogger(__name__)

# Largest side, in pixels of the scale, of one RPN pass while mining; larger images are tiled.
MAX_TILE_SIDE = 1333
# Overlap of those tiles, in pixels of the scale (at most a quarter of a tile).
_TILE_OVERLAP = 128
_LOG_PERIOD = 20


@torch.no_grad()
def rpn_proposals_at_zoom(
    model: nn.Module, image: torch.Tensor, zoom: float, top_k: int
) -> torch.Tensor:
    """
    The ``top_k`` RPN proposals (highest objectness first) of a whole image seen at ``zoom``.

    The zoomed image is cut into overlapping tiles of at most ``MAX_TILE_SIDE`` pixels a side,
    each resized from the original pixels (bilinear, antialiased when shrinking), normalized
    with ``model.normalize`` and run through ``model.backbone`` and
    ``model.proposal_generator``. The model must be in eval mode.

    Args:
        model: a Detectron2 R-CNN (``backbone``, ``proposal_generator``, ``normalize``).
        image (Tensor): (C, H, W) original image in the model's input format, any dtype.
        zoom (float): pixels of the scale per original pixel.
        top_k (int): number of proposals kept over all tiles.

    Returns:
        Tensor: (R, 4) float32 XYXY proposals in the original frame, R <= top_k, on the CPU.
    """
    if not (zoom > 0 and math.isfinite(zoom)):
        raise ValueError(f"zoom must be a positive finite number, got {zoom}")
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k}")
    device = model.device
    image = image.to(device=device, dtype=torch.float32)
    h, w = image.shape[-2:]
    tile = max(1, math.floor(MAX_TILE_SIDE / zoom))
    overlap = min(tile // 4, math.ceil(_TILE_OVERLAP / zoom))
    boxes, scores = [], []
    for region in tile_box((0, 0, w, h), tile, overlap):
        view = View(0, 0, region, zoomed_hw(region, zoom))
        x = crop_and_resize(image, region, view.out_hw)
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
    sn = cfg.INPUT.SNIPER
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
                proposals = rpn_proposals_at_zoom(model, image_t, zoom, sn.NEGATIVE_PROPOSALS_PER_IMAGE)
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
