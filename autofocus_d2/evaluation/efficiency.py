"""AutoFocusEfficiencyEvaluator: how much of the image pyramid the pipeline actually processed."""
import itertools
import logging
from collections import OrderedDict
from dataclasses import replace
from typing import Dict, List

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..structures import ImageStats

__all__ = ["AutoFocusEfficiencyEvaluator", "summarize_efficiency"]

logger = logging.getLogger(__name__)


def summarize_efficiency(stats: List[Dict]) -> "OrderedDict[str, float]":
    """Aggregate per-image ``autofocus`` output dicts (see CoarseToFinePipeline.image_stats).

    Returns flat metrics: ``pixel_ratio`` (processed / full-pyramid pixels over the dataset),
    ``pixels_per_image``, ``pyramid_pixels_per_image``, ``chips_per_image`` (views at scales >= 1),
    and per scale k: ``pixels_scale{k}``, ``pyramid_pixels_scale{k}`` (means per image),
    ``pixel_ratio_scale{k}`` and ``chips_scale{k}`` (mean views per image).
    """
    n = len(stats)
    if n == 0:
        return OrderedDict()
    num_scales = max(len(s["pyramid_pixels_per_scale"]) for s in stats)

    def scale_sum(key: str, k: int) -> float:
        return float(sum(s[key][k] if k < len(s[key]) else 0 for s in stats))

    pixels = [scale_sum("pixels_per_scale", k) for k in range(num_scales)]
    pyramid = [scale_sum("pyramid_pixels_per_scale", k) for k in range(num_scales)]
    chips = [scale_sum("chips_per_scale", k) for k in range(num_scales)]
    out = OrderedDict()
    out["images"] = float(n)
    out["pixel_ratio"] = sum(pixels) / sum(pyramid)
    out["pixels_per_image"] = sum(pixels) / n
    out["pyramid_pixels_per_image"] = sum(pyramid) / n
    out["chips_per_image"] = sum(chips[1:]) / n
    for k in range(num_scales):
        out[f"pixels_scale{k}"] = pixels[k] / n
        out[f"pyramid_pixels_scale{k}"] = pyramid[k] / n
        out[f"pixel_ratio_scale{k}"] = pixels[k] / pyramid[k] if pyramid[k] else 0.0
        out[f"chips_scale{k}"] = chips[k] / n
    return out


class AutoFocusEfficiencyEvaluator(DatasetEvaluator):
    """Collects the ``autofocus`` dict of every output (AutoFocusRCNN in eval mode) and reports the
    pixels processed against the full pyramid, per scale, and the chips per image."""

    def __init__(self, distributed: bool = True):
        self._distributed = distributed
        self._stats: List[Dict] = []

    def reset(self):
        self._stats = []

    def process(self, inputs, outputs):
        for output in outputs:
            if "autofocus" in output:
                stats = replace(ImageStats.from_dict(output["autofocus"]), chip_boxes_per_scale=None)
                self._stats.append(stats.to_dict())

    def evaluate(self):
        stats = self._stats
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(stats, dst=0)
            if not comm.is_main_process():
                return {}
            stats = list(itertools.chain(*gathered))
        if not stats:
            logger.warning("AutoFocusEfficiencyEvaluator: no output carried 'autofocus' statistics")
            return {}
        summary = summarize_efficiency(stats)
        rows = [
            [k, summary[f"pixels_scale{k}"], summary[f"pyramid_pixels_scale{k}"],
             summary[f"pixel_ratio_scale{k}"], summary[f"chips_scale{k}"]]
            for k in range(len([key for key in summary if key.startswith("chips_scale")]))
        ]
        rows.append(["all", summary["pixels_per_image"], summary["pyramid_pixels_per_image"],
                     summary["pixel_ratio"], summary["chips_per_image"]])
        logger.info(
            "AutoFocus efficiency over %d images (pixels are means per image):\n%s",
            len(stats),
            tabulate(rows, headers=["scale", "pixels", "pyramid pixels", "ratio", "chips"],
                     floatfmt=".3f", tablefmt="pipe"),
        )
        return {"autofocus_efficiency": summary}
