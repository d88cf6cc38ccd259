"""Statistics of a COCO-format detection json (used on the synthetic splits)."""
import json
import math
from typing import Any, Dict, List

import numpy as np

__all__ = ["dataset_statistics"]


def dataset_statistics(json_path: str) -> Dict[str, Any]:
    """
    Summary of a COCO-format json, with COCO's size classes on ``area`` (small < 32^2 <= medium
    < 96^2 <= large). ``small_pixel_coverage`` is the union of small boxes' pixels over all image
    pixels; ``sqrt_area_percentiles`` maps percentile (0, 5, 25, 50, 75, 95, 100) to sqrt(area).
    """
    with open(json_path) as f:
        coco = json.load(f)
    images = {im["id"]: im for im in coco["images"]}
    anns = coco["annotations"]
    areas = np.asarray([a["area"] for a in anns], dtype=np.float64)
    n = max(len(anns), 1)
    small_pixels, total_pixels = 0, 0
    by_image: Dict[int, List[List[float]]] = {i: [] for i in images}
    for a in anns:
        if a["area"] < 32 ** 2:
            by_image[a["image_id"]].append(a["bbox"])
    for image_id, im in images.items():
        total_pixels += im["width"] * im["height"]
        mask = np.zeros((im["height"], im["width"]), dtype=bool)
        for x, y, w, h in by_image[image_id]:
            mask[int(y):int(math.ceil(y + h)), int(x):int(math.ceil(x + w))] = True
        small_pixels += int(mask.sum())
    widths = [im["width"] for im in images.values()]
    heights = [im["height"] for im in images.values()]
    pcts = (0, 5, 25, 50, 75, 95, 100)
    sqrt_areas = np.sqrt(areas) if len(anns) else np.zeros(1)
    return {
        "num_images": len(images),
        "num_instances": len(anns),
        "instances_per_image": len(anns) / max(len(images), 1),
        "width_range": (min(widths), max(widths)) if widths else (0, 0),
        "height_range": (min(heights), max(heights)) if heights else (0, 0),
        "small_share": float(np.sum(areas < 32 ** 2)) / n,
        "medium_share": float(np.sum((areas >= 32 ** 2) & (areas < 96 ** 2))) / n,
        "large_share": float(np.sum(areas >= 96 ** 2)) / n,
        "small_pixel_coverage": small_pixels / max(total_pixels, 1),
        "sqrt_area_percentiles": {p: float(v) for p, v in
                                  zip(pcts, np.percentile(sqrt_areas, pcts))},
        "instances_per_category": {
            c["name"]: sum(1 for a in anns if a["category_id"] == c["id"])
            for c in coco["categories"]
        },
    }
