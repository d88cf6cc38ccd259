"""Every config under configs/ builds an AutoFocus model that trains one step (and, but for the
_BASE_ files, runs the AutoFocus pipeline) on CPU; the COCO configs are Detectron2's detectors with
the paper's AutoFocus settings."""
import os

import pytest
import torch
from detectron2 import model_zoo as d2_model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

import autofocus_d2
from autofocus_d2 import model_zoo
from autofocus_d2.config import sniper_training_scales
from autofocus_d2.structures import ScaleChain
from autofocus_d2.modeling import FocusDetectorMixin

COCO = [
    "COCO-Detection/autofocus_R_50_FPN_1x.yaml",
    "COCO-Detection/autofocus_R_101_FPN_3x.yaml",
    "COCO-Detection/autofocus_R_50_C4_1x.yaml",
]
# Each COCO config and the Detectron2 config of the same detector.
DETECTRON2_TWINS = {
    "COCO-Detection/autofocus_R_50_FPN_1x.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/autofocus_R_101_FPN_3x.yaml": "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "COCO-Detection/autofocus_R_50_C4_1x.yaml": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
}
# Keys of ours that Detectron2's Faster R-CNN does not have or sets otherwise on purpose.
AUTOFOCUS_ONLY = ("MODEL.META_ARCHITECTURE", "MODEL.FOCUS_HEAD.", "MODEL.AUTOFOCUS.",
                  "MODEL.COMPACT_RESNET.", "MODEL.ROI_MASK_HEAD.", "MODEL.SNIPER.",
                  "MODEL.PROPOSAL_GENERATOR.NAME", "MODEL.ROI_HEADS.NAME")
# Our ignore-aware variant of each Detectron2 head (SNIPER training).
SNIPER_VARIANTS = {"RPN": "SNIPERRPN", "StandardROIHeads": "SNIPERStandardROIHeads",
                   "Res5ROIHeads": "SNIPERRes5ROIHeads"}


def all_config_names(suffixes=(".yaml",)):
    names = []
    for dirpath, _, files in os.walk(model_zoo.configs_dir()):
        for f in files:
            if f.endswith(suffixes) and not f.startswith("__"):
                names.append(os.path.relpath(os.path.join(dirpath, f), model_zoo.configs_dir()))
    return sorted(n.replace(os.sep, "/") for n in names)


def cpu_cfg(name):
    cfg = model_zoo.get_config(name)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def tiny_input():
    """A 64x96 image with two ground-truth boxes (one FocusPixel-sized, one larger) and masks."""
    g = torch.Generator().manual_seed(0)
    inst = Instances((64, 96))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 30.0, 40.0], [40.0, 5.0, 90.0, 60.0]]))
    inst.gt_classes = torch.tensor([0, 1])
    # Polygons tracing the boxes, for the mask configs (others ignore the field).
    inst.gt_masks = PolygonMasks([[[10, 10, 30, 10, 30, 40, 10, 40]], [[40, 5, 90, 5, 90, 60, 40, 60]]])
    image = torch.randint(0, 256, (3, 64, 96), generator=g).float()
    return {"image": image, "instances": inst, "height": 64, "width": 96}


def flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, CfgNode):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def test_model_zoo_lists_every_config():
    assert model_zoo.list_configs() == all_config_names((".yaml", ".py"))  # LazyConfig .py too
    assert set(COCO) | {"Synthetic/autofocus_compact_fpn.yaml", "Base-AutoFocus.yaml",
                        "Base-AutoFocus-C4.yaml"} <= set(all_config_names())


def expected_losses(cfg):
    """The training losses of a config's model: the detector's and ``loss_focus`` (the focus loss
    only when retrofitting a frozen detector, MODEL.FOCUS_HEAD.TRAIN_ONLY)."""
    if cfg.MODEL.FOCUS_HEAD.TRAIN_ONLY:
        return {"loss_focus"}
    if cfg.MODEL.META_ARCHITECTURE == "AutoFocusRetinaNet":
        return {"loss_cls", "loss_box_reg", "loss_focus"}
    losses = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "loss_focus"}
    return losses | ({"loss_mask"} if cfg.MODEL.MASK_ON else set()) | (
        {"loss_keypoint"} if cfg.MODEL.KEYPOINT_ON else set())


def _full_size(name):
    """The configs with a full ResNet-50/101 backbone, and the large-frame chain: their build and
    CPU pass take 2-30 s each (measured with -m "not slow" on 2 cores), so they run with the slow
    tests."""
    return "R_50" in name or "R_101" in name or name == "Base-AutoFocus-C4.yaml" or name.endswith("_large.yaml")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if _full_size(n) else n
                                  for n in all_config_names()])
def test_config_builds_and_runs_on_cpu(name):
    cfg = cpu_cfg(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, FocusDetectorMixin)
    assert model.focus_stride == 16

    x = tiny_input()
    with EventStorage():
        losses = model([x])
    assert set(losses) == expected_losses(cfg)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.focus_head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    if os.path.basename(name).startswith("Base-"):
        return  # the bases run through the configs that inherit them
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": x["image"]}])
    assert out["instances"].image_size == (64, 96)
    stats = out["autofocus"]
    assert len(stats["pixels_per_scale"]) == len(cfg.MODEL.AUTOFOCUS.SCALES)
    assert stats["chips_per_scale"][0] == 1


@pytest.mark.parametrize("name", COCO)
def test_coco_configs_have_the_papers_settings(name):
    cfg = cpu_cfg(name)
    af = cfg.MODEL.AUTOFOCUS
    assert cfg.MODEL.META_ARCHITECTURE == "AutoFocusRCNN"
    assert [list(sc) for sc in af.SCALES] == [[480, 512], [800, 1280], [1400, 2000]]
    assert ScaleChain(cfg).zooms((427, 640)) == pytest.approx([0.8, 800 / 427, 2000 / 640])
    assert list(af.FOCUS_THRESHOLD) == [0.02, 0.2]
    assert list(af.DILATION) == [3]
    assert list(af.MIN_CHIP_SIZE) == [256.0, 320.0]
    assert [list(r) for r in af.VALID_RANGES] == [[75.0, -1.0], [32.0, 180.0], [-1.0, 75.0]]
    assert af.CHIP_POLICY == "autofocus"
    assert cfg.INPUT.MIN_SIZE_TEST == 0  # the pipeline resizes
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    depth = cfg.MODEL.RESNETS.DEPTH
    assert model_zoo.get_config(name).MODEL.WEIGHTS == f"detectron2://ImageNetPretrained/MSRA/R-{depth}.pkl"
    # The paper's merge and SNIPER training (official code's training scales and ranges).
    assert (af.VIEW_DETECTIONS, af.RAW_SCORE_THRESH, af.NMS_METHOD, af.SOFT_NMS_SIGMA) == ("raw", 0.001, "soft_nms", 0.55)
    assert af.SMALL_DROP_SIZE == 0.0 and af.BORDER_MARGIN == 10.0
    sn = cfg.INPUT.SNIPER
    assert sn.ENABLED and (sn.CHIP_SIZE, sn.CHIP_STRIDE) == (512, 32)
    assert [list(sc) for sc in sn.SCALES] == [[-1, 512], [800, 1280], [1400, 2000]]
    assert [list(r) for r in sn.VALID_RANGES] == [[120.0, -1.0], [32.0, 150.0], [-1.0, 80.0]]
    schedule = {"1x": ((60000, 80000), 90000), "3x": ((210000, 250000), 270000)}
    steps, max_iter = schedule[name.rsplit("_", 1)[1][: -len(".yaml")]]
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (16, 0.02)
    assert (tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER) == (steps, max_iter)


@pytest.mark.parametrize("name", COCO)
def test_coco_detector_is_detectron2s(name):
    """Apart from the AutoFocus keys, MODEL and SOLVER are those of Detectron2's own config."""
    ours = flat(model_zoo.get_config(name))
    theirs_cfg = get_cfg()
    autofocus_d2.add_autofocus_config(theirs_cfg)
    theirs_cfg.merge_from_file(d2_model_zoo.get_config_file(DETECTRON2_TWINS[name]))
    theirs = flat(theirs_cfg)
    diff = {k: (ours[k], theirs[k]) for k in ours
            if k.startswith(("MODEL.", "SOLVER.")) and not k.startswith(AUTOFOCUS_ONLY)
            and ours[k] != theirs[k]}
    assert diff == {}
    for key in ("MODEL.PROPOSAL_GENERATOR.NAME", "MODEL.ROI_HEADS.NAME"):
        assert ours[key] == SNIPER_VARIANTS[theirs[key]]


def test_c4_base_puts_the_focus_head_on_res4():
    cfg = cpu_cfg("Base-AutoFocus-C4.yaml")
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    assert list(cfg.MODEL.RESNETS.OUT_FEATURES) == ["res4"]
    assert list(cfg.MODEL.RPN.IN_FEATURES) == ["res4"]
    assert cfg.MODEL.ROI_HEADS.NAME == "SNIPERRes5ROIHeads"
    assert cfg.MODEL.FOCUS_HEAD.IN_FEATURE == "res4"
    assert cfg.INPUT.MIN_SIZE_TEST == 0


# Image shapes (H, W) each shipped config is meant for: COCO's common ones, and the built-in
# dataset's extremes (its sides are drawn from 1000-2000 px).
TARGET_SHAPES = {
    "COCO": [(480, 640), (427, 640), (640, 480), (640, 640), (375, 500), (333, 500)],
    "Synthetic": [(1000, 1000), (1000, 2000), (2000, 1000), (1500, 1800), (2000, 2000)],
}
# A training zoom within this factor of an inference zoom trains that scale (objects differ by at
# most 20% in size; Detectron2's anchors are 2x apart).
COVER_FACTOR = 1.2


def uncovered_inference_zooms(cfg, shapes):
    """(shape, scale, zoom) of every inference zoom no training zoom is within COVER_FACTOR of."""
    infer = ScaleChain(cfg)
    train = ScaleChain(scales=sniper_training_scales(cfg))
    missed = []
    for hw in shapes:
        if cfg.INPUT.SNIPER.ENABLED:
            ranges = [(z / COVER_FACTOR, z * COVER_FACTOR) for z in train.zooms(hw)]
        else:
            ranges = [whole_image_training_zooms(cfg, hw)]
        for k, z in enumerate(infer.zooms(hw)):
            if not any(lo <= z <= hi for lo, hi in ranges):
                missed.append((hw, k, round(z, 3)))
    return missed


def whole_image_training_zooms(cfg, image_hw):
    """(min, max) zoom of Detectron2's whole-image training (relative_range crop, then
    ResizeShortestEdge with a longer-side cap) of an (H, W) image."""
    h, w = image_hw
    crop_h, crop_w = (cfg.INPUT.CROP.SIZE if cfg.INPUT.CROP.ENABLED else (1.0, 1.0))
    assert not cfg.INPUT.CROP.ENABLED or cfg.INPUT.CROP.TYPE == "relative_range"
    short = list(cfg.INPUT.MIN_SIZE_TRAIN)
    cap = cfg.INPUT.MAX_SIZE_TRAIN
    zooms = []
    for fh in (crop_h, 1.0):
        for fw in (crop_w, 1.0):
            ch, cw = h * fh, w * fw
            for s in (min(short), max(short)):
                zooms.append(min(s / min(ch, cw), cap / max(ch, cw)))
    return min(zooms), max(zooms)


# The whole-image baseline recipe of the built-in model is kept to compare with chip training; it
# is the one shipped config whose training does not reach every inference zoom (test below).
BASELINE = "Synthetic/autofocus_compact_fpn_wholeimage.yaml"


@pytest.mark.parametrize("name", [n for n in all_config_names() if not n.startswith("Base-") and n != BASELINE])
def test_training_scales_cover_the_inference_chain(name):
    cfg = cpu_cfg(name)
    shapes = TARGET_SHAPES[name.split("/")[0].split("-")[0]]
    assert uncovered_inference_zooms(cfg, shapes) == []


def test_the_coverage_check_catches_an_untrained_scale():
    cfg = cpu_cfg("COCO-Detection/autofocus_R_50_FPN_1x.yaml")
    cfg.INPUT.SNIPER.SCALES = [[-1, 512], [800, 1280]]
    cfg.INPUT.SNIPER.VALID_RANGES = [[120.0, -1.0], [-1.0, 150.0]]
    missed = uncovered_inference_zooms(cfg, [(427, 640)])
    assert missed == [((427, 640), 2, 3.125)]
    # The earlier COCO recipe (whole images, 60-100% crops of the height, shorter side 384-800,
    # longer side <= 1333) reached neither scale 0's zoom (0.8) nor scale 2's (3.125) on 427x640.
    cfg.INPUT.SNIPER.ENABLED = False
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "relative_range", [0.6, 1.0]
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (384, 800), 1333
    assert [m[1] for m in uncovered_inference_zooms(cfg, [(427, 640)])] == [0, 2]


def test_the_whole_image_baseline_misses_the_original_resolution_of_large_images():
    cfg = cpu_cfg(BASELINE)
    assert not cfg.INPUT.SNIPER.ENABLED
    # Its zooms reach 1.15 on 1000 px images but only 0.58 on 2000 px ones (the 576 px cap).
    assert uncovered_inference_zooms(cfg, [(1000, 1000), (2000, 2000)]) == [((2000, 2000), 1, 1.0)]
