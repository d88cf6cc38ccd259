"""Datasets checked before training or evaluation starts, instead of failing (or silently going
wrong) at the first read of a bad record, possibly after training.

For ``--register-coco`` (:func:`autofocus_d2.data.register_coco_datasets`) and, through
:func:`validate_dataset`, for any registration of Detectron2 dataset dicts:

- errors, listing the first offenders and their count: duplicate image ids, duplicate annotation
  ids, images listed but missing or unreadable, ``width``/``height`` that disagree with the file
  (after EXIF rotation, as Detectron2 reads it), category ids that are not categories, annotations
  of images that are not listed; a json that is not COCO instances (a results list, captions,
  panoptic) is refused saying what it is;
- fixes, with the counts logged: boxes reaching outside the image are clipped to it, boxes of zero
  or negative size (after clipping) dropped (:func:`clip_and_drop_boxes`, applied when the dataset
  is loaded);
- :func:`check_num_classes`: a ``NUM_CLASSES`` that differs from the registered categories is an
  error naming the config key; :func:`check_evaluable`: a test set without annotations is an error
  (COCO AP would be nan).

Image files are checked by reading their headers (PIL ``Image.open``), not by decoding them.
"""
import json
import logging
import os
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from PIL import Image

__all__ = [
    "DatasetError",
    "check_config_datasets",
    "check_evaluable",
    "check_num_classes",
    "clip_and_drop_boxes",
    "coco_thing_metadata",
    "num_classes_key",
    "read_coco_instances",
    "validate_coco_instances",
    "validate_dataset",
]

logger = logging.getLogger(__name__)

_SHOWN = 5  # offenders listed per problem
_EXIF_ORIENTATION = 0x0112
_PROGRESS_EVERY = 2000  # images between progress lines of the file checks


class DatasetError(ValueError):
    """A dataset (json or registered dataset dicts) that cannot be trained or evaluated on as is."""


class _Problems:
    """Offenders per kind of problem, reported together as one :class:`DatasetError`."""

    def __init__(self, what: str):
        self.what = what
        self.found: Dict[str, List[Any]] = {}

    def add(self, kind: str, offender: Any) -> None:
        self.found.setdefault(kind, []).append(offender)

    def raise_if_any(self) -> None:
        if not self.found:
            return
        lines = []
        for kind, items in self.found.items():
            shown = ", ".join(str(x) for x in items[:_SHOWN])
            more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            lines.append(f"  {len(items)} {kind}: {shown}{more}")
        raise DatasetError(f"{self.what}:\n" + "\n".join(lines))


def _describe_json(data: Any) -> str:
    """What a json document that is not COCO instances is, for the error message."""
    if isinstance(data, list):
        first = data[0] if data and isinstance(data[0], dict) else None
        if first is not None and {"image_id", "score"} <= set(first):
            return (f"a COCO results file (a list of {len(data)} detections with image_id/"
                    f"{'bbox' if 'bbox' in first else 'segmentation'}/score), not ground truth")
        return f"a json list of {len(data)} entries, not a COCO instances dict"
    if not isinstance(data, dict):
        return f"a json {type(data).__name__}, not a COCO instances dict"
    anns = data.get("annotations")
    first = anns[0] if isinstance(anns, list) and anns and isinstance(anns[0], dict) else {}
    if "segments_info" in first:
        return "COCO panoptic json (annotations with segments_info), not instances"
    if "caption" in first:
        return "COCO captions json, not instances"
    missing = sorted({"images", "annotations", "categories"} - set(data))
    return f"not COCO instances json (no {missing}; keys: {sorted(data)[:8]})"


def read_coco_instances(json_file: str) -> Dict[str, Any]:
    """Read ``json_file`` and return it if it is COCO instances json (a dict with the lists
    ``images``, ``annotations`` and ``categories``, annotations with ``bbox``), else raise
    :class:`DatasetError` saying what it is."""
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{json_file} is not valid json ({e})") from None
    ok = isinstance(data, dict) and all(isinstance(data.get(k), list)
                                        for k in ("images", "annotations", "categories"))
    anns = data.get("annotations") if ok else None
    if ok and anns and not (isinstance(anns[0], dict) and "bbox" in anns[0]):
        ok = False
    if not ok:
        raise DatasetError(f"{json_file} is {_describe_json(data)}")
    return data


def coco_thing_metadata(data: Dict[str, Any]) -> Tuple[List[str], Dict[int, int]]:
    """``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` of COCO instances json, exactly as
    Detectron2's ``load_coco_json`` sets them (categories sorted by id)."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return [c["name"] for c in cats], {c["id"]: i for i, c in enumerate(cats)}


def _image_size_on_disk(path: str) -> Tuple[int, int]:
    """(width, height) of the image file as Detectron2's ``read_image`` returns it (EXIF
    orientations 5-8 swap them); raises OSError if the file cannot be opened as an image."""
    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block: read_image ignores it too
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _check_duplicates(ids: Iterable[Any], kind: str, problems: _Problems) -> None:
    for value, n in Counter(ids).items():
        if n > 1:
            problems.add(f"duplicate {kind} ids", f"{value} (x{n})")


def _check_images(records: Sequence[Tuple[Any, str, Any, Any]], problems: _Problems, what: str) -> None:
    """Records ``(image_id, path, width, height)``: missing or unreadable files, sizes that disagree
    with the file (width/height None: not compared)."""
    total = len(records)
    too_large: List[str] = []
    for i, (image_id, path, width, height) in enumerate(records):
        if total >= _PROGRESS_EVERY and i and i % _PROGRESS_EVERY == 0:
            logger.info("%s: checked %d / %d image files", what, i, total)
        if not os.path.isfile(path):
            problems.add("images listed but missing", path)
            continue
        try:
            size = _image_size_on_disk(path)
        except Image.DecompressionBombError:  # readable only where the tool raises PIL's limit
            too_large.append(path)
            continue
        except (OSError, ValueError) as e:
            problems.add("images unreadable", f"{path} ({type(e).__name__}: {e})")
            continue
        if width is not None and height is not None and size != (int(width), int(height)):
            problems.add("images whose width/height disagree with the file",
                         f"{path} (listed {width}x{height}, file {size[0]}x{size[1]})")
    if too_large:
        logger.warning("%s: %d images above PIL's pixel limit, sizes not checked (first: %s)",
                       what, len(too_large), too_large[0])


def validate_coco_instances(data: Dict[str, Any], image_dir: str, what: str) -> None:
    """Raise :class:`DatasetError` listing every problem of COCO instances ``data`` (see the module
    docstring) whose images are under ``image_dir``; ``what`` names the dataset in the message."""
    problems = _Problems(f"{what} cannot be used")
    cat_ids = [c.get("id") for c in data["categories"]]
    _check_duplicates((img.get("id") for img in data["images"]), "image", problems)
    _check_duplicates((a.get("id") for a in data["annotations"]), "annotation", problems)
    _check_duplicates(cat_ids, "category", problems)
    image_ids = {img.get("id") for img in data["images"]}
    known_cats = set(cat_ids)
    for a in data["annotations"]:
        if a.get("category_id") not in known_cats:
            problems.add("annotations with a category id that is not in 'categories'",
                         f"annotation {a.get('id')}: category_id {a.get('category_id')}")
        if a.get("image_id") not in image_ids:
            problems.add("annotations of an image id that is not in 'images'",
                         f"annotation {a.get('id')}: image_id {a.get('image_id')}")
    records = [(img.get("id"), os.path.join(image_dir, str(img.get("file_name"))),
                img.get("width"), img.get("height")) for img in data["images"]]
    _check_images(records, problems, what)
    problems.raise_if_any()


def validate_dataset(name: str, *, check_files: bool = True) -> List[Dict[str, Any]]:
    """
    Check the registered dataset ``name`` (Detectron2 dataset dicts from ``DatasetCatalog``) before
    training or evaluating on it, and return its dicts: duplicate ``image_id``, duplicate annotation
    ``id`` (where the dicts keep it), files missing or unreadable, ``width``/``height`` that disagree
    with the file (``check_files=False`` skips the files), and ``category_id`` outside
    ``[0, len(thing_classes))`` of its metadata. Raises :class:`DatasetError` listing the first
    offenders of each problem and their count.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get(name)
    problems = _Problems(f"Dataset {name!r} cannot be used")
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    _check_duplicates((d.get("image_id") for d in dicts), "image", problems)
    _check_duplicates((a["id"] for d in dicts for a in d.get("annotations", []) if "id" in a),
                      "annotation", problems)
    for d in dicts:
        for a in d.get("annotations", []):
            c = a.get("category_id")
            if classes is not None and not (isinstance(c, int) and 0 <= c < len(classes)):
                problems.add(f"annotations with a category id outside [0, {len(classes)}) "
                             "(the metadata's thing_classes)", f"{d.get('file_name')}: {c}")
    if check_files:
        records = [(d.get("image_id"), d["file_name"], d.get("width"), d.get("height")) for d in dicts]
        _check_images(records, problems, f"Dataset {name!r}")
    problems.raise_if_any()
    return dicts


def clip_and_drop_boxes(dicts: List[Dict[str, Any]], what: str) -> List[Dict[str, Any]]:
    """Clip every box to its image (``width``/``height`` of the dict) and drop the boxes of zero or
    negative width or height after clipping, in place; log the counts. Boxes in any
    ``BoxMode``; crowd boxes are treated the same."""
    from detectron2.structures import BoxMode

    clipped = dropped = 0
    for d in dicts:
        w, h = d.get("width"), d.get("height")
        if w is None or h is None:
            continue
        kept = []
        for a in d.get("annotations", []):
            x0, y0, x1, y1 = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            cx0, cx1 = (min(max(x, 0), w) for x in (x0, x1))
            cy0, cy1 = (min(max(y, 0), h) for y in (y0, y1))
            if cx1 <= cx0 or cy1 <= cy0:
                dropped += 1
                continue
            if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
                clipped += 1
                a["bbox"] = BoxMode.convert([cx0, cy0, cx1, cy1], BoxMode.XYXY_ABS, a["bbox_mode"])
            kept.append(a)
        if "annotations" in d:
            d["annotations"] = kept
    if clipped or dropped:
        logger.warning("%s: clipped %d boxes reaching outside their image; dropped %d boxes of zero "
                       "or negative size", what, clipped, dropped)
    return dicts


def num_classes_key(cfg) -> Tuple[str, int]:
    """The yacs key holding the class count of ``cfg``'s meta-architecture and its value:
    ``MODEL.RETINANET.NUM_CLASSES`` for RetinaNet-style meta-architectures, else
    ``MODEL.ROI_HEADS.NUM_CLASSES``."""
    if cfg.MODEL.META_ARCHITECTURE.endswith("RetinaNet"):
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES


def _thing_classes(name: str) -> Optional[List[str]]:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    meta = MetadataCatalog.get(name)
    if meta.get("thing_classes", None) is None:
        DatasetCatalog.get(name)  # Detectron2's loaders (load_coco_json) set it when loading
    return meta.get("thing_classes", None)


def check_num_classes(num_classes: int, key: str, dataset_names: Iterable[str]) -> None:
    """Raise :class:`DatasetError` naming ``key`` if ``num_classes`` differs from the number of
    ``thing_classes`` of a dataset of ``dataset_names``; a dataset without ``thing_classes`` is
    logged as not checked."""
    for name in dataset_names:
        classes = _thing_classes(name)
        if classes is None:
            logger.warning("Dataset %r has no thing_classes metadata: %s=%d not checked against it",
                           name, key, num_classes)
            continue
        if len(classes) != num_classes:
            shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
            raise DatasetError(
                f"{key} is {num_classes} but dataset {name!r} has {len(classes)} categories "
                f"({shown}): set {key} {len(classes)}"
            )


def check_evaluable(dataset_names: Iterable[str]) -> None:
    """Raise :class:`DatasetError` for a test dataset with no annotations at all: COCO AP of it is
    not defined (pycocotools reports nan)."""
    from detectron2.data import DatasetCatalog

    for name in dataset_names:
        dicts = DatasetCatalog.get(name)
        if not any(d.get("annotations") for d in dicts):
            raise DatasetError(
                f"Dataset {name!r} ({len(dicts)} images) has no annotations: it cannot be evaluated "
                "(AP would be nan). Remove it from DATASETS.TEST / dataloader.test, or run demo.py "
                "on its images for detections only."
            )


def check_config_datasets(cfg, *, train: bool = True) -> None:
    """Before a yacs-config run: the class count key (:func:`num_classes_key`) against the
    categories of ``DATASETS.TRAIN`` (if ``train``) and ``DATASETS.TEST``, and every test dataset
    evaluable (:func:`check_evaluable`)."""
    key, num_classes = num_classes_key(cfg)
    names = (list(cfg.DATASETS.TRAIN) if train else []) + list(cfg.DATASETS.TEST)
    check_num_classes(num_classes, key, names)
    check_evaluable(cfg.DATASETS.TEST)
