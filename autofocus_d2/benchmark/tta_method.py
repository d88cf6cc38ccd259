"""The ``tta`` row: Detectron2's own multi-scale test (``GeneralizedRCNNWithTTA``) on the same model.

It is what a Detectron2 user has without this plugin: the whole image resized to each size of
``cfg.TEST.AUG`` (``DatasetMapperTTA``: shortest side MIN_SIZES, longest side at most MAX_SIZE, no
flip here), one plain ``inference`` pass per size, the boxes mapped back and merged by
Detectron2's class-wise NMS (``ROI_HEADS.NMS_THRESH_TEST``, ``TEST.DETECTIONS_PER_IMAGE``); with
MODEL.MASK_ON its masks are the average over the sizes.

The sizes are those of the scale chain (``MODEL.AUTOFOCUS.SCALES``) for each image, so ``tta``
processes the pyramid's pixels (without its tiling of long views) and differs from ``pyramid`` in
the merge only. A chain size with -1 (e.g. the original resolution) depends on the image, which a
fixed ``TEST.AUG.MIN_SIZES`` cannot say: :class:`ScaleChainTTAMapper` builds a ``DatasetMapperTTA``
per image and size, with that size's (shortest side, longest side) as (MIN_SIZES, MAX_SIZE).
"""
from typing import Any, Callable, Dict, List

from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.modeling.test_time_augmentation import DatasetMapperTTA

from ..inference.pipeline import build_autofocus_pipeline
from ..structures import ImageStats, ScaleChain
from .timing import DetectorPass, timed_inference

__all__ = ["ScaleChainTTAMapper", "tta_method"]


class ScaleChainTTAMapper:
    """TTA mapper: one augmented copy of an input dict (``image`` (C, H, W), ``height``, ``width``)
    per scale of ``scale_chain``, resized by Detectron2's ``DatasetMapperTTA`` to that scale's
    (h, w) for this image, in scale order, without flip."""

    def __init__(self, scale_chain: ScaleChain):
        self.scale_chain = scale_chain

    def __call__(self, dataset_dict: Dict[str, Any]) -> List[Dict[str, Any]]:
        hw = tuple(dataset_dict["image"].shape[-2:])
        out = []
        for k in range(len(self.scale_chain)):
            oh, ow = self.scale_chain.image_hw(hw, k)
            mapper = DatasetMapperTTA(min_sizes=[min(oh, ow)], max_size=max(oh, ow), flip=False)
            out.extend(mapper(dataset_dict))
        return out


def tta_method(model, cfg) -> Callable:
    """A predict function (one input dict -> ``instances``, ``autofocus`` stats,
    ``detector_passes``) running ``GeneralizedRCNNWithTTA`` around ``model`` itself, one size per
    pass (batch size 1) so each pass is one scale of the chain."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.AUG.ENABLED = True
    cfg.TEST.AUG.FLIP = False
    scale_chain = ScaleChain(cfg)
    tta = GeneralizedRCNNWithTTA(cfg, model, tta_mapper=ScaleChainTTAMapper(scale_chain), batch_size=1)
    pipeline = build_autofocus_pipeline(cfg)
    num_scales = len(scale_chain)

    def predict(x):
        passes: List[DetectorPass] = []
        with timed_inference(model, passes):
            out = tta([x])[0]
        if len(passes) % num_scales:
            raise RuntimeError(f"TTA ran {len(passes)} passes for a chain of {num_scales} scales")
        # Passes come in scale order: the boxes of every size, then (MASK_ON) the masks of every size.
        passes = [p._replace(scale=i % num_scales) for i, p in enumerate(passes)]
        pixels = [p.pixels for p in passes[:num_scales]]
        hw = tuple(x["image"].shape[-2:])
        return {
            "instances": out["instances"],
            "autofocus": ImageStats(
                pixels_per_scale=pixels,
                chips_per_scale=[1] * num_scales,
                pyramid_pixels_per_scale=pipeline.pyramid_pixels(hw),
            ).to_dict(),
            "detector_passes": passes,
        }

    return predict
