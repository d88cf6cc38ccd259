"""SNIPER chip training data: the mapper of chip records, their transforms and the loader.

Frames: the **original frame** is the image as the dataset stores it; a chip record's
``sniper_chip`` is XYXY in it. The **chip frame** is the network input made from a chip: the
chip cropped from the original image and zoomed by the record's ``sniper_zoom`` (pixels of the
training scale per original pixel), at most about ``CHIP_SIZE`` x ``CHIP_SIZE`` pixels.

The records (one per chip and training scale, positives first, then the mined negative chips)
come from :func:`~autofocus_d2.data.sniper_records.sniper_chip_records`.
Detectron2's own loader (:func:`detectron2.data.build_detection_train_loader`) runs them with
:class:`SNIPERDatasetMapper` and :class:`ChipEpochSampler`.
"""
import copy
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import CfgNode, configurable
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..config import DEFAULT_MAX_IMAGE_MPIX, sniper_valid_ranges, validate_sniper_config
from ..utils.image_io import read_image
from .chip_sampler import ChipEpochSampler
from .sniper_chips import chip_box_validity
from .sniper_records import annotation_boxes, read_negative_chips, sniper_chip_records

__all__ = [
    "chip_transform",
    "transform_polygons",
    "SNIPERDatasetMapper",
    "ChipEpochSampler",
    "build_sniper_train_loader",
]


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
        negatives = read_negative_chips(cfg.INPUT.SNIPER.NEGATIVE_CHIPS_FILE)  # checked by sniper_chip_records
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
