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

``planted_detector``: a model-free stand-in detector for pipeline tests (the FocusDetector
interface) and, through :meth:`PlantedDetector.inference`, for code that calls a Detectron2 model
(the SAHI wrapper).

Images carry one object per colour channel (value 255 on a black background). The stand-in
"detects" the object of channel c as the bounding box of the pixels of that channel above 127.5
in the view it is given (class c, score 0.9 - 0.1 * c), and its FocusPixel map is 1 in every
stride cell that holds a pixel of a channel listed in ``focus_channels``. So whatever the pipeline
crops and resizes, the detections it gets back show where the objects really landed.

With ``with_masks`` it also returns Detectron2-style box-relative ``pred_masks`` (N, 1, 8, 8):
the left half of each box (columns 0-3) is 1, the right half 0. With ``with_keypoints`` it returns
``pred_keypoints`` (N, 2, 3) in the view frame: the box's top-left corner (score 1.0) and its
centre (score 0.5), and box-relative ``pred_keypoint_heatmaps`` (N, 2, 4, 4) filled with the class.
With ``score_by_area`` a box's score is area / (area + 1000) instead (a whole object outranks its
cut parts, as a slicing merge needs).
With ``separate`` it detects one box per separated block of a channel (blocks split by empty
columns, then by empty rows), as a local detector would: what chip canvases need, where several
chips share one pass.


``ground_truth_detector``: a model-free FocusDetector whose detections in every view are exactly the
ground-truth boxes that the view fully contains. The pipeline never tells a detector which view it
sees, so the input images carry it: :func:`coordinate_image` writes, in every pixel, its own
original-frame x and y centre coordinates (channels 0 and 1) and the image's index (channel 2).
Bilinear resizing (antialiased or not) keeps a linear ramp exact away from the view's edges, so two
interior pixels give the view's zoom and offset, which round to the integer view box.

``planted_coco`` / ``noisy_detections``: planted COCO ground truth and detections for the AP and
paired-bootstrap tests.

Fixtures shared by the tests of every folder: the tiny synthetic split as a COCO json
(``tiny_coco``), and edited copies of it (bad datasets).

``bad_image_files``: image files of every kind a reader must handle or refuse.

``recorded_checkpoint``: a model's weights saved as ``train_net.py`` saves them, with the record
(config, class names) that lets the tools run the weights alone; no training needed.
"""
import contextlib
import io
import json
import logging
import os
import shutil
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, ImageList, Instances
from PIL import Image

from autofocus_d2.checkpoint import AtomicCheckpointer
from autofocus_d2 import model_zoo
from autofocus_d2.data import ensure_split
from autofocus_d2.model_metadata import model_metadata

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


class PlantedDetector:
    def __init__(self, focus_channels=(1, 2), stride=16, focus_value=None, with_masks=False, with_keypoints=False,
                 separate=False, score_by_area=False, input_format="RGB"):
        self.device = torch.device("cpu")
        self.input_channels = 3
        self.focus_stride = stride
        self.size_divisibility = 32
        self.focus_channels = list(focus_channels)
        self.focus_value = focus_value  # a float: a constant map of that value instead
        self.batches = []  # (batch size, padded h, padded w) of every call
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.separate = separate
        self.score_by_area = score_by_area
        self.input_format = input_format  # of the images given to inference(); detect() reads channels as given
        self.inputs = []  # (h, w) of every image given to inference()

    def to(self, device):
        self.device = torch.device(device)
        return self

    def normalize(self, images):
        return ImageList.from_tensors(list(images), self.size_divisibility)

    @staticmethod
    def runs(present):
        """[start, end) of each run of True in a 1-D bool tensor."""
        edges = torch.diff(torch.cat([present.new_zeros(1), present, present.new_zeros(1)]).int()).nonzero()[:, 0]
        return edges.view(-1, 2).tolist()

    def blocks(self, mask, x=0, y=0):
        """Boxes [x0, y0, x1, y1] of ``mask`` (h, w) offset by (x, y): one overall, or with
        ``separate`` one per block (split recursively at empty columns and empty rows)."""
        ys, xs = mask.nonzero(as_tuple=True)
        if not len(xs):
            return []
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if not self.separate:
            return [[x + x0, y + y0, x + x1, y + y1]]
        mask = mask[y0:y1, x0:x1]
        cols, rows = self.runs(mask.any(dim=0)), self.runs(mask.any(dim=1))
        if len(cols) == 1 and len(rows) == 1:
            return [[x + x0, y + y0, x + x1, y + y1]]
        if len(cols) > 1:
            return [b for a, e in cols for b in self.blocks(mask[:, a:e], x + x0 + a, y + y0)]
        return [b for a, e in rows for b in self.blocks(mask[a:e], x + x0, y + y0 + a)]

    def detect(self, images, with_focus=True):
        tensor = images.tensor
        self.batches.append(tuple([tensor.shape[0], *tensor.shape[-2:]]))
        results = []
        for b, (h, w) in enumerate(images.image_sizes):
            view = tensor[b, :, :h, :w]
            boxes, classes = [], []
            for c in range(view.shape[0]):
                for box in self.blocks(view[c] > 127.5):
                    boxes.append(box)
                    classes.append(c)
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32, device=tensor.device).reshape(-1, 4))
            inst.pred_classes = torch.tensor(classes, dtype=torch.long, device=tensor.device)
            if self.score_by_area:
                area = inst.pred_boxes.area()
                inst.scores = area / (area + 1000.0)
            else:
                inst.scores = 0.9 - 0.1 * inst.pred_classes.float()
            n = len(inst)
            if self.with_masks:
                inst.pred_masks = torch.zeros(n, 1, 8, 8, device=tensor.device)
                inst.pred_masks[:, :, :, :4] = 1.0
            if self.with_keypoints:
                b = inst.pred_boxes.tensor
                corner = torch.stack([b[:, 0], b[:, 1], torch.ones(n, device=tensor.device)], dim=1)
                centre = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                                      torch.full((n,), 0.5, device=tensor.device)], dim=1)
                inst.pred_keypoints = torch.stack([corner, centre], dim=1)
                inst.pred_keypoint_heatmaps = inst.pred_classes.float()[:, None, None, None].expand(n, 2, 4, 4).clone()
            results.append(inst)
        focus = None
        if with_focus:
            if self.focus_value is not None:
                shape = (tensor.shape[0], -(-tensor.shape[-2] // self.focus_stride), -(-tensor.shape[-1] // self.focus_stride))
                focus = torch.full(shape, self.focus_value, device=tensor.device)
            else:
                marked = (tensor[:, self.focus_channels] > 127.5).float().amax(dim=1, keepdim=True)
                focus = F.max_pool2d(marked, self.focus_stride, ceil_mode=True)[:, 0]
        return results, focus

    def inference(self, batched_inputs):
        """As a Detectron2 model's ``inference``: each input's "image" (C, H, W) in
        ``input_format`` (class = RGB channel), detections mapped to its "height" x "width" by
        ``detector_postprocess`` (as GeneralizedRCNN)."""
        from detectron2.modeling.postprocessing import detector_postprocess

        outputs = []
        for x in batched_inputs:
            image = x["image"]
            self.inputs.append(tuple(image.shape[-2:]))
            if self.input_format == "BGR":
                image = image.flip(0)
            images = ImageList(image[None].float(), [tuple(image.shape[-2:])])
            (inst,), _ = self.detect(images, with_focus=False)
            self.batches.pop()
            outputs.append({"instances": detector_postprocess(inst, x["height"], x["width"])})
        return outputs


@pytest.fixture
def planted_detector():
    return PlantedDetector


def paint(image_hw, objects):
    """(3, H, W) float image, black, with each (channel, x0, y0, x1, y1) painted 255."""
    image = torch.zeros(3, *image_hw)
    for c, x0, y0, x1, y1 in objects:
        image[c, y0:y1, x0:x1] = 255.0
    return image


@pytest.fixture
def paint_image():
    return paint


def coordinate_image(image_hw: Tuple[int, int], index: int) -> torch.Tensor:
    """(3, H, W) float: x + 0.5, y + 0.5 (the pixel's centre, original frame) and ``index``."""
    h, w = image_hw
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([xs + 0.5, ys + 0.5, torch.full((h, w), float(index))])


def _recover_interval(ramp: torch.Tensor) -> Tuple[int, int]:
    """The integer original-frame [start, end) of a view axis from its ramp of centre coordinates
    (length n >= 8): value(j) = start + (j + 0.5) * (end - start) / n at interior pixels j."""
    n = len(ramp)
    if n < 8:
        raise ValueError(f"a view side of {n} px is too short to read its coordinates")
    j1, j2 = n // 4, n - 1 - n // 4
    step = float(ramp[j2] - ramp[j1]) / (j2 - j1)  # original pixels per view pixel
    start = float(ramp[j1]) - (j1 + 0.5) * step
    end = start + n * step
    for value in (start, end):
        if abs(value - round(value)) > 0.05:
            raise AssertionError(f"view edge {value} read from the coordinate image is not an integer")
    return round(start), round(end)


class GroundTruthDetector:
    """Detects, in each view, every ground-truth box of its image that the view fully contains, as
    the box mapped into the view's frame, class = the box's index in its image, score 0.9; a zero
    FocusPixel map when asked. ``gt_boxes``: per image index, (G, 4) XYXY original-frame boxes.
    ``views`` records every (image index, view box, view (h, w)) seen."""

    def __init__(self, gt_boxes: Sequence[torch.Tensor], stride: int = 16):
        self.device = torch.device("cpu")
        self.input_channels = 3
        self.focus_stride = stride
        self.size_divisibility = 32
        self.gt_boxes = [b.float() for b in gt_boxes]
        self.views: List[Tuple[int, Tuple[int, int, int, int], Tuple[int, int]]] = []

    def normalize(self, images):
        return ImageList.from_tensors(list(images), self.size_divisibility)

    def detect(self, images, with_focus=True, **options):
        results = []
        for b, (h, w) in enumerate(images.image_sizes):
            view = images.tensor[b, :, :h, :w]
            x0, x1 = _recover_interval(view[0, h // 2, :])
            y0, y1 = _recover_interval(view[1, :, w // 2])
            index = int(round(float(view[2, h // 2, w // 2])))
            self.views.append((index, (x0, y0, x1, y1), (h, w)))
            gt = self.gt_boxes[index]
            inside = (gt[:, 0] >= x0) & (gt[:, 1] >= y0) & (gt[:, 2] <= x1) & (gt[:, 3] <= y1)
            idx = inside.nonzero().squeeze(1)
            sx, sy = w / (x1 - x0), h / (y1 - y0)  # as View.factors
            boxes = (gt[idx] - gt.new_tensor([x0, y0, x0, y0])) * gt.new_tensor([sx, sy, sx, sy])
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(boxes)
            inst.pred_classes = idx
            inst.scores = torch.full((len(idx),), 0.9)
            results.append(inst)
        focus = None
        if with_focus:
            hf, wf = (-(-s // self.focus_stride) for s in images.tensor.shape[-2:])
            focus = torch.zeros(len(images.image_sizes), hf, wf)
        return results, focus


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
    crowd=False, empty_images=0)`` returns ``(coco_gt, perfect)``.

    Image i (id 100 + i, 200 x 300) holds 0-3 objects of every class (random XYWH boxes of 8-60 px;
    at least one object per class over the dataset), the last ``empty_images`` images none; with
    ``crowd`` every fifth image has one extra crowd region. ``perfect`` is a COCO results list with
    one detection per non-crowd object on its exact box, distinct scores in (0.5, 1).
    """
    from pycocotools.coco import COCO

    def make(num_images, num_classes, seed=0, crowd=False, empty_images=0):
        rng = np.random.default_rng(seed)
        images, annotations, perfect = [], [], []
        for i in range(num_images):
            image_id = 100 + i
            images.append({"id": image_id, "width": 300, "height": 200, "file_name": f"{image_id}.png"})
            if i >= num_images - empty_images:
                continue
            for c in range(num_classes):
                count = int(rng.integers(0, 4)) if i else 1  # image 0: every class once
                for _ in range(count):
                    w, h = rng.uniform(8, 60, size=2)
                    x, y = rng.uniform(0, 300 - w), rng.uniform(0, 200 - h)
                    box = [float(x), float(y), float(w), float(h)]
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": c + 1,
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
                    perfect.append({"image_id": image_id, "category_id": c + 1, "bbox": list(box),
                                    "score": float(rng.uniform(0.5, 1.0))})
            if crowd and i % 5 == 0:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                    "bbox": [0.0, 0.0, 120.0, 90.0], "area": 10800.0, "iscrowd": 1})
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations,
                        "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(num_classes)]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco, perfect

    return make


@pytest.fixture
def noisy_detections():
    """
    A factory: ``noisy_detections(perfect, seed=0, score_decimals=None, extra_per_image=3,
    extra_classes=None)`` returns a COCO results list made from ``perfect`` as a real detector's
    would look: boxes jittered by up to 30% of their size, a tenth of the objects missed,
    ``extra_per_image`` false positives per image (random boxes, of random classes or of
    ``extra_classes``), random scores (rounded to ``score_decimals`` to make ties).
    """

    def make(perfect, seed=0, score_decimals=None, extra_per_image=3, extra_classes=None):
        rng = np.random.default_rng(seed)
        classes = sorted(extra_classes or {d["category_id"] for d in perfect})
        out = []

        def score():
            s = float(rng.uniform(0.05, 1.0))
            return round(s, score_decimals) if score_decimals is not None else s

        for d in perfect:
            if rng.uniform() < 0.1:
                continue
            x, y, w, h = d["bbox"]
            jx, jy, jw, jh = rng.uniform(-0.3, 0.3, size=4)
            out.append({"image_id": d["image_id"], "category_id": d["category_id"],
                        "bbox": [x + jx * w, y + jy * h, w * (1 + jw), h * (1 + jh)], "score": score()})
        for image_id in sorted({d["image_id"] for d in perfect}):
            for _ in range(extra_per_image):
                w, h = rng.uniform(8, 60, size=2)
                out.append({"image_id": image_id, "category_id": int(rng.choice(classes)),
                            "bbox": [float(rng.uniform(0, 240)), float(rng.uniform(0, 140)), float(w), float(h)],
                            "score": score()})
        return out

    return make


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
