"""SNIPER chip training data: chip records, their mapper, the epoch sampler and the loader.

Frames: the **original frame** is the image as the dataset stores it; a chip record's
``sniper_chip`` is XYXY in it. The **chip frame** is the network input made from a chip: the
chip cropped from the original image and zoomed by the record's ``sniper_zoom`` (pixels of the
training scale per original pixel), at most about ``CHIP_SIZE`` x ``CHIP_SIZE`` pixels.

Each training image becomes several records (one per chip and training scale), positives first,
then the negative chips mined by :func:`mine_negative_chips` (``tools/mine_negative_chips.py``).
Detectron2's own loader (:func:`detectron2.data.build_detection_train_loader`) runs them with
:class:`SNIPERDatasetMapper` and :class:`ChipEpochSampler`.
"""
import copy
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import CfgNode, configurable
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..config import DEFAULT_MAX_IMAGE_MPIX, sniper_training_scales, sniper_valid_ranges, validate_sniper_config
from ..structures.scale_chain import ScaleChain
from ..utils.image_io import read_image
from .chip_sampler import ChipEpochSampler
from ..structures.focus_labels import focus_size_range
from .sniper_chips import chip_box_validity, chips_holding, positive_chips

__all__ = [
    "NEGATIVE_CHIPS_VERSION",
    "annotation_boxes",
    "sniper_chip_records",
    "load_negative_chips",
    "check_negative_chips",
    "chip_transform",
    "transform_polygons",
    "SNIPERDatasetMapper",
    "ChipEpochSampler",
    "build_sniper_train_loader",
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
    content = _read_negative_chips(path)
    check_negative_chips(content, scales, _negative_chips_source(path))
    return content


def _negative_chips_source(path: str) -> str:
    return f"{_FILE_KEY} = {path!r}"


def _read_negative_chips(path: str) -> Any:
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


def _round(v: float) -> int:
    return int(math.floor(v + 0.5))


def chip_transform(chip: Sequence[float], zoom: float, image_hw: Tuple[int, int]) -> T.TransformList:
    """
    The transforms from the original frame to the chip frame: crop the chip rounded out to
    whole pixels, resize that crop by ``zoom`` (rounded output size, so the effective factor is
    within half an output pixel of ``zoom``), then crop away the rounding margin, leaving
    ``round(chip side * zoom)`` pixels a side.

    Args:
        chip: XYXY in the original frame, inside the image of ``image_hw`` = (H, W).
        zoom (float): chip-frame pixels per original pixel.
    """
    h, w = image_hw
    x0, y0, x1, y1 = (float(v) for v in chip)
    cx0, cy0 = max(0, math.floor(x0 + 1e-3)), max(0, math.floor(y0 + 1e-3))
    cx1, cy1 = min(w, math.ceil(x1 - 1e-3)), min(h, math.ceil(y1 - 1e-3))
    cw, ch = cx1 - cx0, cy1 - cy0
    if cw < 1 or ch < 1:
        raise ValueError(f"chip {list(chip)} holds no pixel of the image of (H, W) = {image_hw}")
    rw, rh = max(1, _round(cw * zoom)), max(1, _round(ch * zoom))
    ow, oh = min(rw, max(1, _round((x1 - x0) * zoom))), min(rh, max(1, _round((y1 - y0) * zoom)))
    ox = min(rw - ow, max(0, _round((x0 - cx0) * rw / cw)))
    oy = min(rh - oh, max(0, _round((y0 - cy0) * rh / ch)))
    tfms: List[T.Transform] = [T.CropTransform(cx0, cy0, cw, ch, w, h)]
    if (rw, rh) != (cw, ch):
        tfms.append(T.ResizeTransform(ch, cw, rh, rw))
    if (ox, oy, ow, oh) != (0, 0, rw, rh):
        tfms.append(T.CropTransform(ox, oy, ow, oh, rw, rh))
    return T.TransformList(tfms)


def transform_polygons(polygons: Sequence[Sequence[float]], transforms: T.TransformList) -> List[np.ndarray]:
    """
    COCO polygons (flat [x, y, ...] lists, original frame) -> the same polygons in the chip frame,
    every vertex moved by ``transforms.apply_coords`` and nothing clipped.

    Detectron2's ``CropTransform.apply_polygons`` clips with shapely and keeps only each piece's
    exterior, which fills the holes of a polygon that encodes one (the synthetic "ring" is an
    even-odd "keyhole" polygon); unclipped polygons keep them, and a mask target is rasterized
    inside its proposal box, so vertices beyond the chip do no harm.

    Returns:
        list of (2P,) float64 arrays, one per polygon.
    """
    out = []
    for polygon in polygons:
        points = np.asarray(polygon, dtype=np.float64)
        if points.ndim != 1 or len(points) < 6 or len(points) % 2:
            raise ValueError(f"a polygon must be a flat [x, y, ...] list of >= 3 points, got {len(points)} values")
        out.append(transforms.apply_coords(points.reshape(-1, 2)).reshape(-1))
    return out


class SNIPERDatasetMapper:
    """
    Map a chip record (:func:`sniper_chip_records`) to the input of a Detectron2 model, like
    ``DatasetMapper`` does for a whole image: read the image, cut the chip, zoom it
    (:func:`chip_transform`), apply the augmentations (a random flip) and transform the
    annotations with Detectron2's ``transform_instance_annotations``.

    Annotations not overlapping the chip are dropped. The others become instances with the
    extra field ``gt_ignore`` (bool): True for a box that is not VALID in the chip
    (:func:`chip_box_validity` on the box clipped to the image, with the record's valid range):
    out of the scale's size range, or cut by the chip. The model ignores those (neither
    foreground nor background). Instances whose box is empty in the chip frame are dropped.
    With ``use_instance_mask``, polygon masks are moved into the chip frame by
    :func:`transform_polygons` (unclipped, holes kept) and RLE masks by Detectron2.

    The output dict has "image" (C, h, w) uint8 tensor, "instances", "height"/"width" (h, w of
    the chip-frame image), "file_name", "image_id", "sniper_scale" and "focus_zoom_step" (the
    record's ``sniper_zoom_step``: the FocusPixel labels' zoom step to the next scale).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        image_format: str,
        chip_size: int,
        augmentations: Sequence[T.Augmentation] = (),
        use_instance_mask: bool = False,
        instance_mask_format: str = "polygon",
        max_image_mpix: float = DEFAULT_MAX_IMAGE_MPIX,
    ):
        """
        Args:
            is_train: augmentations are applied only in training.
            image_format: as ``cfg.INPUT.FORMAT``.
            max_image_mpix: largest image file read, megapixels (``INPUT.MAX_IMAGE_MPIX``; files
                are read by :func:`autofocus_d2.utils.read_image`).
            chip_size: chip side in pixels of the training scale (``INPUT.SNIPER.CHIP_SIZE``).
            augmentations: applied in the chip frame after the chip is cut and zoomed.
            use_instance_mask, instance_mask_format: as in ``DatasetMapper``.
        """
        self.is_train = is_train
        self.image_format = image_format
        self.chip_size = int(chip_size)
        self.augmentations = T.AugmentationList(list(augmentations) if is_train else [])
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.max_image_mpix = max_image_mpix

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        if cfg.MODEL.KEYPOINT_ON:
            raise ValueError("SNIPER chip training does not support keypoints (MODEL.KEYPOINT_ON)")
        flip = cfg.INPUT.RANDOM_FLIP
        if flip not in ("none", "horizontal", "vertical"):
            raise ValueError(f"Invalid config INPUT.RANDOM_FLIP: {flip!r}")
        augs = []
        if flip != "none":
            augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "chip_size": cfg.INPUT.SNIPER.CHIP_SIZE,
            "augmentations": augs,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "max_image_mpix": cfg.INPUT.MAX_IMAGE_MPIX,
        }

    def __call__(self, record: Dict[str, Any]) -> Dict[str, Any]:
        image = read_image(record["file_name"], format=self.image_format, max_mpix=self.max_image_mpix)
        utils.check_image_size(record, image)
        hw = image.shape[:2]
        chip, zoom = record["sniper_chip"], float(record["sniper_zoom"])
        transforms = chip_transform(chip, zoom, hw)
        aug_input = T.AugInput(transforms.apply_image(image))
        transforms = transforms + self.augmentations(aug_input)
        image = aug_input.image
        out_hw = image.shape[:2]

        annos = [a for a in record.get("annotations", []) if a.get("iscrowd", 0) == 0]
        boxes = annotation_boxes({"annotations": annos})
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([hw[1], hw[0]] * 2))
        chip_t = torch.tensor(chip, dtype=torch.float64)
        inter = torch.minimum(boxes[:, 2:], chip_t[2:]) - torch.maximum(boxes[:, :2], chip_t[:2])
        overlaps = (inter > 0).all(dim=1)
        valid = chip_box_validity(boxes, chip_t, record["sniper_valid_range"], self.chip_size / zoom)
        kept = []
        for anno, keep in zip(annos, overlaps.tolist()):
            if keep:
                anno = copy.deepcopy(anno)
                segm = anno.pop("segmentation", None)
                anno.pop("keypoints", None)
                if self.use_instance_mask and isinstance(segm, dict):  # RLE: Detectron2 pastes it
                    anno["segmentation"] = segm
                anno = utils.transform_instance_annotations(anno, transforms, out_hw)
                if self.use_instance_mask and isinstance(segm, list):
                    anno["segmentation"] = transform_polygons(segm, transforms)
                kept.append(anno)
        instances = utils.annotations_to_instances(kept, out_hw, mask_format=self.instance_mask_format)
        instances.gt_ignore = ~valid[overlaps]
        return {
            "file_name": record["file_name"],
            "image_id": record["image_id"],
            "height": out_hw[0],
            "width": out_hw[1],
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "instances": utils.filter_empty_instances(instances),
            "sniper_scale": int(record["sniper_scale"]),
            "focus_zoom_step": float(record.get("sniper_zoom_step", 1.0)),
        }


def build_sniper_train_loader(cfg: CfgNode, mapper=None, dataset: Optional[List[Dict]] = None):
    """
    Detectron2's ``build_detection_train_loader`` over the SNIPER chip records of
    ``cfg.DATASETS.TRAIN`` (negatives from ``INPUT.SNIPER.NEGATIVE_CHIPS_FILE`` when set),
    with ``mapper`` (default :class:`SNIPERDatasetMapper`) and :class:`ChipEpochSampler`.

    Args:
        dataset: the training images (Detectron2 dataset dicts, e.g. LazyConfig's
            ``dataloader.train.dataset = L(get_detection_dataset_dicts)(names=...)``) instead of
            ``cfg.DATASETS.TRAIN``; the chip settings still come from ``cfg``.
    """
    validate_sniper_config(cfg)  # the heads' support of ignored boxes: AutoFocusRCNN checks it when built
    if dataset is None:
        dataset_dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        source = cfg.DATASETS.TRAIN
    else:
        dataset_dicts, source = list(dataset), "dataloader.train.dataset"
    negatives = None
    if cfg.INPUT.SNIPER.NEGATIVE_CHIPS_FILE:
        negatives = _read_negative_chips(cfg.INPUT.SNIPER.NEGATIVE_CHIPS_FILE)  # checked by sniper_chip_records
    records, num_positive = sniper_chip_records(cfg, dataset_dicts, negative_chips=negatives)
    if num_positive == 0:
        raise ValueError(
            f"no positive SNIPER chip in {source}: no box lies in the valid range "
            f"of any training scale (INPUT.SNIPER.VALID_RANGES = {sniper_valid_ranges(cfg)})"
        )
    sampler = ChipEpochSampler(num_positive, len(records) - num_positive,
                               cfg.INPUT.SNIPER.NEGATIVES_PER_EPOCH)
    return build_detection_train_loader(
        dataset=records,
        mapper=mapper or SNIPERDatasetMapper(cfg, True),
        sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
