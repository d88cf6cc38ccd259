"""The one fixture layer of the suite (pytest loads it for every test directory).

``repo_root``: the repository root (a str), for the scripts (``train_net.py``, ``demo.py``,
``tools/*.py``) that tests run as subprocesses and for the files they read (docs, MODEL_ZOO.md).
Config paths that a module needs as constants come from
:func:`autofocus_d2.model_zoo.get_config_file` instead.

``compact_cfg``: ``compact_cfg(**autofocus)``, the built-in synthetic CPU config
(``configs/Synthetic/autofocus_compact_fpn.yaml``, as ``model_zoo.get_config`` reads it) with
``MODEL.DEVICE`` "cpu" and the given MODEL.AUTOFOCUS keys set; a new CfgNode on every call.
``r18_c4_cfg``: ``r18_c4_cfg()``, a small ResNet-18 C4 AutoFocusRCNN config (the C4 twin of the
compact one in the modeling tests). Tests parametrized over configs name these fixtures and get
them with ``request.getfixturevalue``.

``planted_detector`` / ``ground_truth_detector``: the model-free stand-in detectors
:class:`~tests.stand_in_detectors.PlantedDetector` and
:class:`~tests.stand_in_detectors.GroundTruthDetector` (the classes; tests build them with their
options), with ``paint_image`` (:func:`~tests.stand_in_detectors.paint`) and
``make_coordinate_image`` (:func:`~tests.stand_in_detectors.coordinate_image`) for their input
images; what they detect is described in ``tests/stand_in_detectors.py``.

``planted_coco`` / ``noisy_detections``: planted COCO ground truth and detections for the AP and
paired-bootstrap tests (the builders of ``tests/planted_data.py``).

Fixtures shared by the tests of every folder: the tiny synthetic split as a COCO json
(``tiny_coco``), and edited copies of it (bad datasets).

``bad_image_files``: image files of every kind a reader must handle or refuse.

``recorded_checkpoint``: a model's weights saved as ``train_net.py`` saves them, with the record
(config, class names) that lets the tools run the weights alone; no training needed.
"""
import json
import logging
import os
import shutil
import uuid

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from autofocus_d2.checkpoint import AtomicCheckpointer
from autofocus_d2 import model_zoo
from autofocus_d2.data import ensure_split
from autofocus_d2.model_metadata import model_metadata
from tests.planted_data import make_noisy_detections, make_planted_coco
from tests.stand_in_detectors import GroundTruthDetector, PlantedDetector, coordinate_image, paint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPACT_CONFIG = "Synthetic/autofocus_compact_fpn.yaml"


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


def compact_config(**autofocus):
    """The compact synthetic config on the CPU, with MODEL.AUTOFOCUS ``key=value`` overrides."""
    cfg = model_zoo.get_config(COMPACT_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    for key, value in autofocus.items():
        setattr(cfg.MODEL.AUTOFOCUS, key, value)
    return cfg


@pytest.fixture(scope="session")
def compact_cfg():
    return compact_config


def r18_c4_config():
    """A small AutoFocusRCNN on Detectron2's C4 layout: ResNet-18 (BatchNorm, nothing frozen),
    3 classes, on the CPU."""
    from detectron2.config import get_cfg

    from autofocus_d2 import add_autofocus_config

    cfg = get_cfg()
    add_autofocus_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "AutoFocusRCNN"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    return cfg


@pytest.fixture(scope="session")
def r18_c4_cfg():
    return r18_c4_config


@pytest.fixture
def planted_detector():
    return PlantedDetector


@pytest.fixture
def paint_image():
    return paint


@pytest.fixture
def ground_truth_detector():
    return GroundTruthDetector


@pytest.fixture
def make_coordinate_image():
    return coordinate_image


@pytest.fixture
def planted_coco():
    """
    A factory of planted COCO ground truth: ``planted_coco(num_images, num_classes, seed=0,
    crowd=False, empty_images=0)`` returns ``(coco_gt, perfect)``
    (:func:`~tests.planted_data.make_planted_coco`).
    """
    return make_planted_coco


@pytest.fixture
def noisy_detections():
    """
    A factory: ``noisy_detections(perfect, seed=0, score_decimals=None, extra_per_image=3,
    extra_classes=None)`` returns a COCO results list made from ``perfect`` as a real detector's
    would look (:func:`~tests.planted_data.make_noisy_detections`).
    """
    return make_noisy_detections


@pytest.fixture(scope="session")
def tiny_coco():
    """(json file, image folder) of the built-in tiny split (6 images, 79 boxes, 6 categories)."""
    json_file = ensure_split("autofocus_synth_tiny")
    return json_file, os.path.join(os.path.dirname(json_file), "images")


@pytest.fixture
def edited_coco(tmp_path, tiny_coco):
    """``edited_coco(edit)``: a copy of the tiny split in ``tmp_path`` (json and images), the json
    changed by ``edit(data, image_dir)`` (which may also change the copied image files; it may
    return a replacement document); returns (json file, image folder)."""

    def make(edit):
        json_file, image_dir = tiny_coco
        images = tmp_path / "images"
        if not images.exists():
            shutil.copytree(image_dir, images)
        with open(json_file) as f:
            data = json.load(f)
        replaced = edit(data, images)
        out = tmp_path / "instances.json"
        out.write_text(json.dumps(data if replaced is None else replaced))
        return str(out), str(images)

    return make


@pytest.fixture
def logged():
    """``logged(logger_name)``: a list that receives the messages of that logger (and its
    children) until the test ends, whatever ``propagate`` flags Detectron2's ``setup_logger`` set
    on the way to the root logger (where pytest's caplog listens)."""
    attached = []

    def attach(name):
        messages = []
        handler = logging.Handler(logging.DEBUG)
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger(name).addHandler(handler)
        attached.append((name, handler))
        return messages

    yield attach
    for name, handler in attached:
        logging.getLogger(name).removeHandler(handler)


def write_bad_image_files(folder):
    """Image files of every kind a reader must handle or refuse, in ``folder``; returns
    {case: path}. "grey16": a 16-bit grey PNG (48 x 64) whose pixel (r, c) is (64 r + c) * 20;
    "truncated": the first half of a JPEG; "text": a text file named .png; "float": a 32-bit float
    TIFF; "good": an 8-bit RGB JPEG (48 x 64)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {case: str(folder / name) for case, name in [
        ("grey16", "grey16.png"), ("truncated", "truncated.jpg"), ("text", "text.png"),
        ("float", "float.tif"), ("good", "good.jpg")]}
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)).save(paths["grey16"])
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(paths["good"], quality=95)
    data = open(paths["good"], "rb").read()
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    with open(paths["text"], "w") as f:
        f.write("not an image\n")
    Image.fromarray(rng.random((48, 64)).astype(np.float32)).save(paths["float"])
    return paths


@pytest.fixture
def bad_image_files(tmp_path):
    return write_bad_image_files(tmp_path / "images")


@pytest.fixture
def recorded_checkpoint(tmp_path):
    """``recorded_checkpoint(model, cfg, name="model_final")``: ``model``'s weights saved in
    ``tmp_path`` with the record of ``cfg`` (its config, and the ``thing_classes`` its datasets have
    now), as ``train_net.py`` writes its checkpoints; returns the file."""

    def save(model, cfg, name="model_final"):
        AtomicCheckpointer(model, str(tmp_path), metadata=model_metadata(cfg)).save(name)
        return str(tmp_path / f"{name}.pth")

    return save


# ------------------------------------------------------------------------------ model zoo
@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Downloads and verification markers go to a fresh cache; the manifest is never the env's
    (the model-zoo test modules use it for every test: ``pytestmark``)."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "iopath_cache"))
    monkeypatch.delenv(model_zoo.MANIFEST_ENV, raising=False)


@pytest.fixture(scope="session")
def released(repo_root, tmp_path_factory):
    """A fake training run (:func:`tests.zoo_training_run.make_training_dir`) released into a
    folder published as file:// URLs."""
    from autofocus_d2.model_zoo import release as rel
    from tests.zoo_training_run import NAME, make_training_dir

    root = tmp_path_factory.mktemp("zoo")
    model, results = make_training_dir(root / "train")
    md = root / "MODEL_ZOO.md"
    shutil.copyfile(os.path.join(repo_root, "MODEL_ZOO.md"), md)
    release_dir = root / "release"
    info = rel.release_checkpoint(
        str(root / "train"), NAME, str(release_dir), manifest=str(root / "manifest.json"),
        url_prefix=release_dir.as_uri(), model_zoo_md=str(md), date="2025-01-31",
    )
    return {"root": root, "model": model, "results": results, "info": info, "md": md}


# ------------------------------------------------------------------------------ SNIPER data
@pytest.fixture
def two_image_dataset(tmp_path):
    """Two registered 300 x 400 random images with a few boxes (classes "a", "b"), for the SNIPER
    loader and mining tests; yields the dataset name and unregisters it afterwards."""
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(2):
        path = str(tmp_path / f"tiny_{i}.png")
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path)
        annos = [{"bbox": [20 + 100 * i, 30, 40, 50], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0},
                 {"bbox": [200, 100, 180, 180], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1}]
        dicts.append({"file_name": path, "height": 300, "width": 400, "image_id": i, "annotations": annos})
    name = f"sniper_tiny_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).thing_classes = ["a", "b"]
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
