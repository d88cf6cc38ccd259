"""The per-image record of what an inference method did: the ``autofocus`` entry of each output.

The AutoFocus pipeline, the SAHI and TTA baselines of the benchmark all fill it; the efficiency
evaluator, the benchmark and the prediction writer read it. Outputs carry it as a plain dict
(:meth:`ImageStats.to_dict`), so reports and json files stay plain data.
"""
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional

__all__ = ["ImageStats"]


@dataclass
class ImageStats:
    """
    Attributes:
        pixels_per_scale: pixels the detector processed at each scale (all views of the image).
        chips_per_scale: number of views (whole image, chips or tiles) at each scale.
        pyramid_pixels_per_scale: pixels of the full pyramid (every scale on the whole image;
            0 at a scale skipped for this image size).
        chip_boxes_per_scale: per scale, the XYXY boxes (original frame, integers) of the views;
            None where the method does not report them.
        skipped_scales: the scales skipped for this image size
            (:meth:`autofocus_d2.structures.ScaleChain.skipped_scales`); None where not reported.
    """

    pixels_per_scale: List[int]
    chips_per_scale: List[int]
    pyramid_pixels_per_scale: List[int]
    chip_boxes_per_scale: Optional[List[List[List[int]]]] = None
    skipped_scales: Optional[List[int]] = None

    # Key order of the dict form (what reports and prediction files have always held).
    _ORDER = ("pixels_per_scale", "chips_per_scale", "chip_boxes_per_scale", "pyramid_pixels_per_scale",
              "skipped_scales")

    def to_dict(self) -> Dict[str, Any]:
        """The plain dict of the outputs' ``autofocus`` entry; fields that are None are left out."""
        return {k: getattr(self, k) for k in self._ORDER if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ImageStats":
        """The record of an ``autofocus`` dict; ValueError naming missing or unknown keys."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name not in ("chip_boxes_per_scale", "skipped_scales")}
        missing, unknown = sorted(required - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise ValueError(f"not an autofocus stats record: missing keys {missing}, unknown keys {unknown}")
        return cls(**d)
