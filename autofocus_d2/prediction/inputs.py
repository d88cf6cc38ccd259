"""What a prediction run reads: the list of inputs, each image read from disk, and the mapper that
turns one input into the model's input dict (or into a recorded failure).

Inputs are given as folders (their images, recursively), glob patterns, text files of paths (one
per line) or registered Detectron2 datasets. Each input gets a ``key``: its path relative to the
common folder of all inputs, which names its output file and is unique.
"""
import glob
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

__all__ = [
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "PredictionInput",
    "UnreadableImageError",
    "collect_inputs",
    "read_input_image",
    "PredictionMapper",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LIST_EXTENSIONS = (".txt", ".lst")


@dataclass(frozen=True)
class PredictionInput:
    """One image of a prediction run.

    Attributes:
        file_name: absolute path of the image.
        key: unique name of its outputs (path relative to the common folder of all inputs).
        image_id: the dataset's image id for a registered dataset, else the input's 0-based
            position in the run's sorted input list (used by the merged COCO results).
    """

    file_name: str
    key: str
    image_id: Any


class UnreadableImageError(Exception):
    """An input image that cannot be used; the message is the reason recorded in the failures."""


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _images_in_folder(folder: str) -> List[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
    return found


def _paths_in_list_file(list_file: str) -> List[str]:
    """Paths of a text file, one per line (blank lines and ``#`` comments skipped); relative paths
    are relative to the list file's folder. Missing files are kept: reading them fails and is
    recorded, as for any bad input."""
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file) as f:
        lines = [line.strip() for line in f]
    return [os.path.join(base, line) for line in lines if line and not line.startswith("#")]


def collect_inputs(specs: Sequence[str]) -> List[PredictionInput]:
    """
    The inputs of ``specs``, in a deterministic order (each spec's images sorted, specs in order,
    a path given twice kept once).

    Each spec is one of: an image file; a folder (its images, recursively, by extension
    :data:`IMAGE_EXTENSIONS`); a glob pattern (``**`` recursive); a text file of paths
    (:data:`LIST_EXTENSIONS`); or the name of a registered Detectron2 dataset (its ``file_name`` s
    and ``image_id`` s).

    Raises:
        ValueError: a spec that is none of these, or matches no image.
    """
    entries = []  # (absolute path, image id or None)
    for spec in specs:
        if os.path.isdir(spec):
            found = [(p, None) for p in _images_in_folder(spec)]
        elif os.path.isfile(spec) and spec.lower().endswith(LIST_EXTENSIONS):
            found = [(p, None) for p in _paths_in_list_file(spec)]
        elif os.path.isfile(spec):
            found = [(spec, None)]
        elif _is_glob(spec):
            found = [(p, None) for p in sorted(glob.glob(os.path.expanduser(spec), recursive=True))
                     if os.path.isfile(p)]
        elif spec in DatasetCatalog.list():
            found = [(d["file_name"], d.get("image_id")) for d in DatasetCatalog.get(spec)]
        else:
            raise ValueError(
                f"--input {spec!r} is not an image file, a folder, a glob pattern, a list file "
                f"({'/'.join(LIST_EXTENSIONS)}) or a registered dataset"
            )
        if not found:
            raise ValueError(f"--input {spec!r} matches no image (extensions {', '.join(IMAGE_EXTENSIONS)})")
        entries.extend((os.path.abspath(p), image_id) for p, image_id in found)

    seen, unique = set(), []
    for path, image_id in entries:
        if path not in seen:
            seen.add(path)
            unique.append((path, image_id))
    root = os.path.commonpath([os.path.dirname(p) for p, _ in unique])
    return [
        PredictionInput(file_name=p, key=os.path.relpath(p, root), image_id=i if image_id is None else image_id)
        for i, (p, image_id) in enumerate(unique)
    ]


def read_input_image(file_name: str, image_format: str) -> np.ndarray:
    """
    The image as an (H, W, C) uint8 array in ``image_format`` (Detectron2's ``read_image``, EXIF
    orientation applied). The one place where a prediction run reads images.

    Raises:
        UnreadableImageError: missing, unreadable, truncated or empty; the message says why.
    """
    if not os.path.isfile(file_name):
        raise UnreadableImageError("file not found")
    try:
        image = utils.read_image(file_name, format=image_format)
    except Exception as e:  # PIL's UnidentifiedImageError, OSError (truncated), DecompressionBombError...
        raise UnreadableImageError(f"cannot read the image: {type(e).__name__}: {e}") from None
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise UnreadableImageError(f"empty image (shape {tuple(image.shape)})")
    return image


class PredictionMapper:
    """
    One :class:`PredictionInput` -> the model's input dict, as Detectron2's test-time
    ``DatasetMapper``: the image read in ``INPUT.FORMAT``, resized by the test augmentation
    (none when ``INPUT.MIN_SIZE_TEST`` is 0, as in the AutoFocus configs), as a (C, H, W) uint8
    tensor, with ``height``/``width`` of the original image so that the model returns boxes in
    original pixels. An image that cannot be read gives ``{"input": ..., "failure": reason}``
    instead of raising, so that a data loader worker never stops the run.
    """

    def __init__(self, image_format: str, augmentations: Sequence[T.Augmentation]):
        self.image_format = image_format
        self.augmentations = T.AugmentationList(list(augmentations))

    @classmethod
    def from_config(cls, cfg) -> "PredictionMapper":
        return cls(cfg.INPUT.FORMAT, utils.build_augmentation(cfg, is_train=False))

    def __call__(self, item: PredictionInput) -> Dict[str, Any]:
        try:
            image = read_input_image(item.file_name, self.image_format)
        except UnreadableImageError as e:
            return {"input": item, "failure": str(e)}
        height, width = image.shape[:2]
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = aug_input.image
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"input": item, "image": tensor, "height": height, "width": width,
                "image_id": item.image_id, "file_name": item.file_name}

