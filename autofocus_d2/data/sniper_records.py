"""SNIPER chip records: the chips of each training image, and the negative-chips file they use.

Frames: the **original frame** is the image as the dataset stores it; a chip record's
``sniper_chip`` is XYXY in it, and its ``sniper_valid_range`` is sqrt(area) in original pixels.
``sniper_zoom`` is the pixels of the record's training scale per original pixel.

Each training image becomes several records (one per chip and training scale), positives first,
then the negative chips mined by :func:`~autofocus_d2.data.sniper_mining.mine_negative_chips`
(``tools/mine_negative_chips.py``) and read from ``INPUT.SNIPER.NEGATIVE_CHIPS_FILE``
(:func:`read_negative_chips`, checked by :func:`check_negative_chips`).
:mod:`autofocus_d2.data.sniper_loader` maps and loads the records.
"""
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from detectron2.config import CfgNode, configurable
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..config import sniper_training_scales, sniper_valid_ranges
from ..structures.focus_labels import focus_size_range
from ..structures.scale_chain import ScaleChain
from .sniper_chips import chips_holding, positive_chips

__all__ = [
    "NEGATIVE_CHIPS_VERSION",
    "annotation_boxes",
    "check_negative_chips",
    "focus_objects",
    "load_negative_chips",
    "read_negative_chips",
    "sniper_chip_records",
]

logger = logging.getLogger(__name__)

NEGATIVE_CHIPS_VERSION = 1
_FILE_KEY = "INPUT.SNIPER.NEGATIVE_CHIPS_FILE"
# A negative chip may exceed the image by this many original pixels (rounding in the json).
_CHIP_IMAGE_TOL = 1.0


def annotation_boxes(dataset_dict: Dict[str, Any]) -> torch.Tensor:
    """(M, 4) float64 XYXY boxes (original frame) of the non-crowd annotations of a dataset
    dict, in annotation order."""
    boxes = [
        BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in dataset_dict.get("annotations", [])
        if a.get("iscrowd", 0) == 0
    ]
    return torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def check_negative_chips(content: Any, scales: Sequence[Sequence[float]], source: str) -> None:
    """Check the structure of a negative-chips json content (see :func:`mine_negative_chips`)
    and that it was mined at ``scales``; raise ValueError naming ``source`` otherwise."""
    if not isinstance(content, dict) or not {"version", "scales", "chips"} <= set(content):
        raise ValueError(f"{source}: expected a dict with 'version', 'scales' and 'chips'")
    if content["version"] != NEGATIVE_CHIPS_VERSION:
        raise ValueError(f"{source}: version {content['version']!r} is not {NEGATIVE_CHIPS_VERSION}")
    try:
        mined = [[float(v) for v in s] for s in content["scales"]]
    except (TypeError, ValueError):
        raise ValueError(f"{source}: 'scales' must be [[short, cap], ...]") from None
    expected = [[float(v) for v in s] for s in scales]
    if mined != expected:
        raise ValueError(
            f"{source}: mined at scales {mined}, but the training scales are {expected} "
            "(INPUT.SNIPER.SCALES); mine the negative chips again with these scales"
        )
    if not isinstance(content["chips"], dict):
        raise ValueError(f"{source}: 'chips' must map image ids to lists of chips")
    for image_id, chips in content["chips"].items():
        for chip in chips:
            ok = isinstance(chip, (list, tuple)) and len(chip) == 5
            ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in chip)
            ok = ok and int(chip[4]) == chip[4] and 0 <= chip[4] < len(expected)
            if not ok or not (chip[2] > chip[0] and chip[3] > chip[1]):
                raise ValueError(
                    f"{source}: image {image_id}: bad chip {chip!r}; expected "
                    f"[x0, y0, x1, y1, scale_index] with x1 > x0, y1 > y0, 0 <= scale_index < "
                    f"{len(expected)}"
                )


def load_negative_chips(path: str, scales: Sequence[Sequence[float]]) -> Dict[str, Any]:
    """Read and check a negative-chips json (the ``INPUT.SNIPER.NEGATIVE_CHIPS_FILE``)."""
    content = read_negative_chips(path)
    check_negative_chips(content, scales, _negative_chips_source(path))
    return content


def _negative_chips_source(path: str) -> str:
    return f"{_FILE_KEY} = {path!r}"


def read_negative_chips(path: str) -> Any:
    """The json content of a negative-chips file, unchecked (:func:`sniper_chip_records` checks it)."""
    source = _negative_chips_source(path)
    if not PathManager.exists(path):
        raise FileNotFoundError(
            f"{source} does not exist; write it with tools/mine_negative_chips.py or set "
            f"{_FILE_KEY} to '' to train on positive chips only"
        )
    with PathManager.open(path, "r") as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source} is not valid json: {e}") from None
    return content


def _records_from_config(cfg: CfgNode, dataset_dicts, negative_chips=None):
    head = cfg.MODEL.FOCUS_HEAD
    path = cfg.INPUT.SNIPER.NEGATIVE_CHIPS_FILE
    return {
        "negative_chips_source": _negative_chips_source(path) if path else "negative_chips",
        "dataset_dicts": dataset_dicts,
        "scales": sniper_training_scales(cfg),
        "valid_ranges": sniper_valid_ranges(cfg),
        "chip_size": cfg.INPUT.SNIPER.CHIP_SIZE,
        "chip_stride": cfg.INPUT.SNIPER.CHIP_STRIDE,
        "negative_chips": negative_chips,
        "focus_range": (list(head.SMALL_RANGE), head.SMALL_MIN_FRAME) if cfg.INPUT.SNIPER.FOCUS_CHIPS else None,
    }


def focus_objects(boxes: torch.Tensor, zoom: float, zoom_step: float, focus_range) -> torch.Tensor:
    """(N,) bool: which of the original-frame ``boxes`` are FocusPixel objects in a chip of a scale
    at ``zoom`` whose next scale is ``zoom_step`` times finer (the labels' size range,
    :func:`autofocus_d2.structures.focus_labels.focus_size_range`; ``focus_range`` = (SMALL_RANGE,
    SMALL_MIN_FRAME))."""
    lo, hi = focus_size_range(focus_range[0], zoom_step, focus_range[1])
    sizes = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt() * zoom
    return (sizes >= lo) & (sizes <= hi)


def _chip_record(d: Dict[str, Any], chip: Sequence[float], scale: int, zooms: Sequence[float],
                 valid_range: Sequence[float], negative: bool) -> Dict[str, Any]:
    record = dict(d)  # shallow: the annotations are shared, the mapper copies what it changes
    zoom = float(zooms[scale])
    record.update(
        sniper_chip=[float(v) for v in chip],
        sniper_scale=int(scale),
        sniper_zoom=zoom,
        # The next finer training scale's zoom over this one (1 at the finest): the FocusPixel
        # label rule MODEL.FOCUS_HEAD.SMALL_MIN_FRAME "next_scale" needs it.
        sniper_zoom_step=float(zooms[scale + 1]) / zoom if scale + 1 < len(zooms) else 1.0,
        sniper_valid_range=[float(v) for v in valid_range],
        sniper_negative=bool(negative),
    )
    return record


@configurable(from_config=_records_from_config)
def sniper_chip_records(
    dataset_dicts: List[Dict[str, Any]],
    *,
    scales: Sequence[Sequence[float]],
    valid_ranges: Sequence[Sequence[float]],
    chip_size: int = 512,
    chip_stride: int = 32,
    negative_chips: Optional[Dict[str, Any]] = None,
    focus_range: Optional[Tuple[Sequence[float], str]] = None,
    negative_chips_source: str = "negative_chips",
) -> Tuple[List[Dict[str, Any]], int]:
    """
    Expand Detectron2 dataset dicts into SNIPER chip records: for every image and training scale
    its :func:`positive_chips`, then (after all positives) the ``negative_chips`` of the images.

    Call as ``sniper_chip_records(cfg, dataset_dicts, negative_chips=None)`` or with the keyword
    arguments. Each record is a shallow copy of its image dict plus ``sniper_chip`` ([x0, y0, x1,
    y1], original frame), ``sniper_scale`` (index into ``scales``), ``sniper_zoom``,
    ``sniper_zoom_step`` (the next scale's zoom / ``sniper_zoom``; 1 at the finest scale),
    ``sniper_valid_range`` ([lo, hi], sqrt(area) in original pixels) and ``sniper_negative``.

    Args:
        dataset_dicts: standard dataset dicts with "height", "width", "image_id", "annotations".
        scales: training scales, ``[short, cap]`` pairs (see ``ScaleChain``).
        valid_ranges: one ``[lo, hi]`` per scale, original pixels, -1 = no limit.
        chip_size, chip_stride: in pixels of the training scale.
        negative_chips: the content of a negative-chips json, checked here
            (:func:`check_negative_chips`; the one check on the training path).
        negative_chips_source: what ``negative_chips`` came from, named in its errors (from a
            config: the INPUT.SNIPER.NEGATIVE_CHIPS_FILE key and path).
        focus_range: (SMALL_RANGE, SMALL_MIN_FRAME) of the FocusPixel labels, or None. When given,
            at every scale but the last, the FocusPixel objects (:func:`focus_objects`) that no
            positive chip holds get chips of their own (greedy cover as for valid boxes; the
            record's valid range is the scale's, so they train the focus head, not the
            detector): the head then learns on every region where the coarse scale must find
            small objects, not only around the objects that scale detects (INPUT.SNIPER.FOCUS_CHIPS).

    Returns:
        (list[dict], int): the records, positives first, and the number of positive records.
    """
    chain = ScaleChain(scales=scales)
    if len(valid_ranges) != len(chain):
        raise ValueError(f"{len(valid_ranges)} valid ranges for {len(chain)} training scales")
    if negative_chips is not None:
        check_negative_chips(negative_chips, chain.scales, negative_chips_source)
    positives: List[Dict[str, Any]] = []
    negatives: List[Dict[str, Any]] = []
    per_scale = [0] * len(chain)
    focus_per_scale = [0] * len(chain)
    neg_per_scale = [0] * len(chain)
    seen_ids = set()
    for d in dataset_dicts:
        if not {"height", "width", "image_id"} <= set(d):
            raise ValueError(f"dataset dict {d.get('file_name')!r} lacks height, width or image_id")
        hw = (int(d["height"]), int(d["width"]))
        zooms = chain.zooms(hw)
        boxes = annotation_boxes(d)
        for scale, (zoom, vr) in enumerate(zip(zooms, valid_ranges)):
            chips = positive_chips(boxes, image_hw=hw, zoom=zoom, chip_size=chip_size,
                                   valid_range=vr, stride=chip_stride)
            if focus_range is not None and scale + 1 < len(zooms) and len(boxes):
                small = boxes[focus_objects(boxes, zoom, zooms[scale + 1] / zoom, focus_range)]
                held = chips_holding(small, chips)
                extra = positive_chips(small[~held], image_hw=hw, zoom=zoom, chip_size=chip_size,
                                       valid_range=(-1, -1), stride=chip_stride)
                chips = torch.cat([chips, extra])
                focus_per_scale[scale] += len(extra)
            positives += [_chip_record(d, c.tolist(), scale, zooms, vr, False) for c in chips]
            per_scale[scale] += len(chips)
        seen_ids.add(str(d["image_id"]))
        for *chip, scale in (negative_chips or {"chips": {}})["chips"].get(str(d["image_id"]), []):
            scale = int(scale)
            x0, y0, x1, y1 = chip
            tol = _CHIP_IMAGE_TOL
            if x0 < -tol or y0 < -tol or x1 > hw[1] + tol or y1 > hw[0] + tol:
                raise ValueError(f"negative chip {chip} lies outside image {d['image_id']} "
                                 f"of (H, W) = {hw}")
            negatives.append(_chip_record(d, chip, scale, zooms, valid_ranges[scale], True))
            neg_per_scale[scale] += 1
    if negative_chips is not None:
        unknown = len(set(negative_chips["chips"]) - seen_ids)
        if unknown:
            logger.warning(f"{unknown} images of the negative chips are not in the dataset")
    logger.info(
        f"SNIPER chips of {len(dataset_dicts)} images: positive per scale {per_scale} (of which "
        f"FocusPixel chips {focus_per_scale}), negative per scale {neg_per_scale}"
    )
    return positives + negatives, len(positives)
