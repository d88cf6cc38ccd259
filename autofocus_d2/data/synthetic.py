"""
A deterministic synthetic detection dataset with the statistics AutoFocus exploits.

Images are large (about 1000-2000 px a side) and textured; most objects are small
(sqrt(area) of 8-40 px) and gathered in a few clusters, so small objects are the majority of
instances while covering only a small share of the pixels (COCO: 40% of instances, 0.3% of
pixels). A few medium/large objects (48-400 px) are scattered over the rest of the image.

Each split is generated once from its seed into ``<root>/<split>/`` (``images/*.jpg``,
``instances_<split>.json`` in COCO format, and a ``_COMPLETE.json`` marker) and reused afterwards.
All boxes are XYWH in integer pixels of the original image; each annotation's "segmentation" is
the shape's exact outline as a COCO polygon (``synthetic_shapes``); "area" stays the box area.
The pixels (background, layout, objects) are drawn by ``synthetic_render``; this module holds
the splits' table, and writes, caches and registers the splits.
"""
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .synthetic_render import SYNTHETIC_CATEGORIES, SplitSpec, render_image
from .synthetic_shapes import shape_polygons
from .synthetic_stats import dataset_statistics  # re-exported: statistics of a split's json

__all__ = [
    "SYNTHETIC_SPLITS",
    "dataset_statistics",
    "default_data_root",
    "ensure_split",
    "generate_synthetic_split",
    "register_synthetic_datasets",
]

logger = logging.getLogger(__name__)

# Bump when the rendering (synthetic_render) changes: a cached split made by another version is
# refused, except a version-1 split (same images and boxes, no masks), which gets its polygons
# added in place.
GENERATOR_VERSION = 2
_MARKER = "_COMPLETE.json"
_JPEG_QUALITY = 90


# Constant table of the splits (seed, default count, geometry). "tiny" is for quick tests,
# "large_val" for large-frame benchmarks.
SYNTHETIC_SPLITS: Dict[str, SplitSpec] = {
    "train": SplitSpec(
        seed=1000, num_images=240, side_range=(1000, 2000), clusters=(1, 3),
        cluster_radius=(100, 250), small_per_cluster=(8, 22),
    ),
    "val": SplitSpec(
        seed=2000, num_images=40, side_range=(1000, 2000), clusters=(1, 3),
        cluster_radius=(100, 250), small_per_cluster=(8, 22),
    ),
    "tiny": SplitSpec(
        seed=3000, num_images=6, side_range=(600, 900), clusters=(1, 2),
        cluster_radius=(60, 140), small_per_cluster=(5, 12), large=(1, 3),
    ),
    # Drone/satellite-frame sizes (2000-4000 px a side) for timing the R50-FPN chain
    # (configs/Synthetic/autofocus_R_50_FPN_large.yaml); same objects, more clusters per frame.
    "large_val": SplitSpec(
        seed=4000, num_images=12, side_range=(2000, 4000), clusters=(2, 6),
        cluster_radius=(150, 400), small_per_cluster=(10, 30), large=(4, 10),
    ),
}


def default_data_root() -> str:
    """
    Absolute path of the default cache directory: ``$AUTOFOCUS_DATA`` if that variable is set,
    else ``./datasets/autofocus_synth`` relative to the current working directory.
    """
    return os.path.abspath(os.environ.get("AUTOFOCUS_DATA") or "./datasets/autofocus_synth")


def _spec_for(split: str) -> SplitSpec:
    if split not in SYNTHETIC_SPLITS:
        raise ValueError(
            f"Unknown synthetic split {split!r}; known splits: {sorted(SYNTHETIC_SPLITS)}"
        )
    return SYNTHETIC_SPLITS[split]


# --------------------------------------------------------------------------------------------
# Generation and caching
# --------------------------------------------------------------------------------------------
def _split_dirname(split: str, seed: int, num_images: int) -> str:
    spec = _spec_for(split)
    if seed == spec.seed and num_images == spec.num_images:
        return split
    return f"{split}-seed{seed}-n{num_images}"


def _render_split(spec: SplitSpec, seed: int, num_images: int, split: str,
                  image_dir: Optional[str]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Render a split's images (saved into ``image_dir`` unless None) and return the COCO
    "images" and "annotations" (polygons from :func:`shape_polygons`)."""
    images, annotations = [], []
    start = time.perf_counter()
    for idx in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, idx]))
        img, objects = render_image(rng, spec)
        file_name = f"{idx + 1:06d}.jpg"
        if image_dir is not None:
            img.save(os.path.join(image_dir, file_name), format="JPEG", quality=_JPEG_QUALITY)
        images.append({"id": idx + 1, "file_name": file_name,
                       "width": img.width, "height": img.height})
        for category, (x0, y0, w, h) in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": idx + 1, "category_id": category + 1,
                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0,
                "segmentation": shape_polygons(SYNTHETIC_CATEGORIES[category], (x0, y0, w, h)),
            })
        if (idx + 1) % 20 == 0 or idx + 1 == num_images:
            logger.info(f"Synthetic split {split!r}: {idx + 1}/{num_images} images "
                        f"({time.perf_counter() - start:.1f} s)")
    return images, annotations


def _write_json(out_dir: str, split: str, info: Dict[str, Any], images: List[Dict[str, Any]],
                annotations: List[Dict[str, Any]]) -> None:
    """Write (atomically replace) the split's json, then its marker."""
    coco = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(SYNTHETIC_CATEGORIES)],
    }
    for name, content in ((f"instances_{split}.json", coco), (_MARKER, info)):
        path = os.path.join(out_dir, name)
        with open(path + f".tmp-{os.getpid()}", "w") as f:
            json.dump(content, f)
        os.replace(path + f".tmp-{os.getpid()}", path)


def _write_split(out_dir: str, split: str, spec: SplitSpec, seed: int, num_images: int,
                 info: Dict[str, Any]) -> None:
    """Render all images of a split into ``out_dir`` and write its json, then the marker."""
    os.makedirs(os.path.join(out_dir, "images"))
    images, annotations = _render_split(spec, seed, num_images, split,
                                        os.path.join(out_dir, "images"))
    _write_json(out_dir, split, info, images, annotations)


def _add_masks(split_dir: str, split: str, spec: SplitSpec, seed: int, num_images: int,
               info: Dict[str, Any]) -> None:
    """Upgrade a version-1 split (boxes only) in place: version 2 renders the same images and
    boxes, so only the json (now with polygons) and the marker are rewritten; the re-rendered
    boxes are checked against the cached ones first."""
    logger.info(f"Adding instance masks to the synthetic split in {split_dir} (generator version "
                f"1 -> {GENERATOR_VERSION}; images unchanged) ...")
    images, annotations = _render_split(spec, seed, num_images, split, None)
    with open(os.path.join(split_dir, f"instances_{split}.json")) as f:
        cached = json.load(f)
    strip = [{k: v for k, v in a.items() if k != "segmentation"} for a in annotations]
    if cached["images"] != images or cached["annotations"] != strip:
        raise RuntimeError(f"{split_dir} (generator version 1) does not match what version "
                           f"{GENERATOR_VERSION} renders; delete it to regenerate.")
    _write_json(split_dir, split, info, images, annotations)


def _check_complete(split_dir: str, info: Dict[str, Any]) -> Optional[str]:
    """Whether ``split_dir`` holds a finished split made with ``info``: None if there is no
    folder, "complete", or "boxes-only" (made by generator version 1 with the same settings);
    raise if it is foreign."""
    if not os.path.isdir(split_dir):
        return None
    marker = os.path.join(split_dir, _MARKER)
    if not os.path.isfile(marker):
        raise RuntimeError(f"{split_dir} exists but is not a completed synthetic split "
                           f"(no {_MARKER}); delete it to regenerate.")
    with open(marker) as f:
        found = json.load(f)
    if found == info:
        return "complete"
    if found.get("version") == 1 and {**found, "version": info["version"]} == info:
        return "boxes-only"
    raise RuntimeError(f"{split_dir} was generated with {found}, expected {info}; "
                       "delete it to regenerate.")


def generate_synthetic_split(root: str, split: str, *, num_images: Optional[int] = None,
                             seed: Optional[int] = None) -> str:
    """
    Generate a split under ``root`` unless it is already there, and return its json path.

    Args:
        root: cache directory; the split goes to ``<root>/<split>`` (or
            ``<root>/<split>-seed<seed>-n<num_images>`` when seed or count differ from
            :data:`SYNTHETIC_SPLITS`), with images in its ``images/`` folder.
        split: one of :data:`SYNTHETIC_SPLITS`.
        num_images, seed: override the split's defaults.

    The split is written to a temporary folder in ``root`` and renamed into place, so an
    interrupted run leaves no half-made split (at most a hidden ``.<split>.tmp-*`` folder).
    Image ``i`` depends only on (seed, i): same seed, same json bytes and image bytes.
    """
    spec = _spec_for(split)
    seed = spec.seed if seed is None else int(seed)
    num_images = spec.num_images if num_images is None else int(num_images)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    root = os.path.abspath(root)
    name = _split_dirname(split, seed, num_images)
    split_dir = os.path.join(root, name)
    json_path = os.path.join(split_dir, f"instances_{split}.json")
    info = {"description": "autofocus-d2 synthetic multi-scale detection dataset",
            "version": GENERATOR_VERSION, "split": split, "seed": seed,
            "num_images": num_images, "spec": asdict(spec)}
    info = json.loads(json.dumps(info))  # tuples -> lists, as read back from the marker
    state = _check_complete(split_dir, info)
    if state == "boxes-only":
        _add_masks(split_dir, split, spec, seed, num_images, info)
    if state is not None:
        return json_path

    try:
        os.makedirs(root, exist_ok=True)
        tmp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root)
    except OSError as e:
        raise OSError(f"Cannot write the synthetic dataset under {root}: {e}") from e
    logger.info(f"Generating synthetic split {split!r} ({num_images} images, seed {seed}) "
                f"into {split_dir} ...")
    try:
        _write_split(tmp_dir, split, spec, seed, num_images, info)
        try:
            os.rename(tmp_dir, split_dir)
        except OSError:
            # Another process finished the same split first: use theirs.
            if _check_complete(split_dir, info) != "complete":
                raise
    finally:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return json_path


# --------------------------------------------------------------------------------------------
# Detectron2 registration
# --------------------------------------------------------------------------------------------
def _load_split(root: str, split: str, dataset_name: str) -> List[Dict[str, Any]]:
    from detectron2.data.datasets import load_coco_json

    json_path = generate_synthetic_split(root, split)
    return load_coco_json(json_path, os.path.join(os.path.dirname(json_path), "images"),
                          dataset_name)


def register_synthetic_datasets(root: Optional[str] = None, *,
                                prefix: str = "autofocus_synth") -> List[str]:
    """
    Register ``<prefix>_train``, ``<prefix>_val`` and ``<prefix>_tiny`` in Detectron2's
    DatasetCatalog and MetadataCatalog, and return the names.

    Loading a dataset from DatasetCatalog generates its split first if needed. The metadata
    (``json_file``, ``image_root``, ``evaluator_type="coco"``, ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id``) is set now, but ``json_file`` only exists once the
    split is generated: call :func:`ensure_split` before building a ``COCOEvaluator`` for a
    dataset that has not been loaded yet.

    Args:
        root: cache directory, default :func:`default_data_root` (resolved to an absolute path
            now). Registering the same names again with the same root does nothing; with a
            different root it raises ValueError.
        prefix: dataset name prefix, e.g. to register a second copy under another root.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = os.path.abspath(root if root is not None else default_data_root())
    names = []
    for split in SYNTHETIC_SPLITS:
        name = f"{prefix}_{split}"
        split_dir = os.path.join(root, split)
        json_file = os.path.join(split_dir, f"instances_{split}.json")
        names.append(name)
        if name in DatasetCatalog.list():
            existing = MetadataCatalog.get(name).get("json_file")
            if existing != json_file:
                raise ValueError(f"Dataset {name!r} is already registered with json_file "
                                 f"{existing}, not {json_file}")
            continue
        DatasetCatalog.register(name, functools.partial(_load_split, root, split, name))
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=os.path.join(split_dir, "images"),
            evaluator_type="coco",
            thing_classes=list(SYNTHETIC_CATEGORIES),
            # Same map load_coco_json builds (sorted category ids -> 0..K-1); set here so that a
            # COCOEvaluator built before loading maps predictions back to json ids.
            thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(SYNTHETIC_CATEGORIES))},
            synthetic_root=root,
            synthetic_split=split,
        )
    return names


def ensure_split(dataset_name: str) -> str:
    """Generate a registered synthetic dataset's split if missing; return its json path."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    if meta.get("synthetic_split") is None:
        raise ValueError(f"{dataset_name!r} is not a registered synthetic dataset; call "
                         "register_synthetic_datasets() first")
    return generate_synthetic_split(meta.synthetic_root, meta.synthetic_split)
