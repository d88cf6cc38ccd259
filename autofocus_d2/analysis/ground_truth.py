"""Ground truth of a COCO-format annotation file, as the oracle FocusChip analysis reads it."""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["SIZE_CLASSES", "GroundTruthImage", "load_coco_ground_truth"]

# COCO size classes on the annotation's "area" (as COCOeval): small < 32^2 <= medium < 96^2 <= large.
SIZE_CLASSES = ("small", "medium", "large")
_COCO_AREA_LIMITS = (32.0**2, 96.0**2)


@dataclass
class GroundTruthImage:
    """The ground truth of one image: ``boxes`` (N, 4) XYXY float in original pixels and their
    COCO size class (N,) int64, an index into :data:`SIZE_CLASSES`."""

    image_id: int
    image_hw: Tuple[int, int]
    boxes: Tensor
    size_class: Tensor


def load_coco_ground_truth(
    json_path: str, max_images: Optional[int] = None
) -> Tuple[List[GroundTruthImage], Dict[str, int]]:
    """
    Read a COCO-format annotation file. Crowd annotations (ignored by COCOeval and by Detectron2's
    training mapper) and boxes with zero width or height are skipped and counted.

    Returns:
        The images (json order, at most ``max_images``) and ``{"crowd": n, "empty": n}``.
    """
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"COCO annotation file not found: {json_path}")
    with open(json_path) as f:
        try:
            coco = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_path} is not valid JSON: {e}") from None
    if not isinstance(coco, dict) or not coco.get("images"):
        raise ValueError(f"{json_path} has no 'images': not a COCO-format annotation file")
    if not coco.get("annotations"):
        raise ValueError(
            f"{json_path} has no annotations: the oracle analysis needs ground-truth boxes "
            "(an image-info-only json such as COCO's test-dev cannot be analysed)"
        )
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    images = coco["images"][:max_images]
    per_image: Dict[int, list] = {}
    for im in images:
        if "height" not in im or "width" not in im:
            raise ValueError(f"{json_path}: image {im.get('id')} has no 'height'/'width'")
        per_image[im["id"]] = []
    known = {im["id"] for im in coco["images"]}
    skipped = {"crowd": 0, "empty": 0}
    for ann in coco["annotations"]:
        if ann.get("image_id") not in known:
            raise ValueError(f"{json_path}: annotation {ann.get('id')} refers to unknown image "
                             f"{ann.get('image_id')}")
        if ann["image_id"] not in per_image:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if ann.get("iscrowd", 0):
            skipped["crowd"] += 1
        elif w <= 0 or h <= 0:
            skipped["empty"] += 1
        else:
            per_image[ann["image_id"]].append((x, y, x + w, y + h, float(ann.get("area", w * h))))
    out = []
    for im in images:
        rows = torch.tensor(per_image[im["id"]], dtype=torch.float64).reshape(-1, 5)
        area = rows[:, 4]
        size_class = (area >= _COCO_AREA_LIMITS[0]).long() + (area >= _COCO_AREA_LIMITS[1]).long()
        image_hw = (int(im["height"]), int(im["width"]))
        out.append(GroundTruthImage(im["id"], image_hw, rows[:, :4], size_class))
    return out, skipped
