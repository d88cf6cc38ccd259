"""Oracle FocusChip analysis (autofocus_d2.analysis.oracle) and its CLI tools/analyze_chips.py.

Hand-made COCO files on 512 x 512 images with scale 0 [256, 256]: scale 0 is the image at zoom
0.5, so a box [x0, y0, x1, y1] is [x0/2, y0/2, x1/2, y1/2] at scale 0, and the focus stride is 16.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg

from autofocus_d2 import add_autofocus_config
from autofocus_d2.analysis import (
    ChipSetting,
    analyze_oracle_chips,
    chip_settings,
    load_coco_ground_truth,
    oracle_focus_map,
    oracle_views,
    run_oracle_analysis,
)
from autofocus_d2.analysis.oracle import detectable_at_scale
from autofocus_d2.data import generate_synthetic_split
from autofocus_d2.inference.chip_policies import AutoFocusChipPolicy
from autofocus_d2.inference.pipeline import CoarseToFinePipeline
from autofocus_d2.inference.views import View

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "analyze_chips.py")

# Whole 512 x 512 image at scale 0 (256 x 256) and at zoom 1 (512 x 512).
PYRAMID_1 = 256 * 256 + 512 * 512
PYRAMID_2 = PYRAMID_1 + 1024 * 1024  # with a second finer scale at zoom 2


def make_cfg(zooms=(1.0,), **overrides):
    """Scale 0 [256, 256], then finer scales whose zoom on the 512 x 512 test images is ``zooms``."""
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    af.SCALES = [[256, 256]] + [[512 * z, -1] for z in zooms]
    af.FOCUS_THRESHOLD = [0.5]
    af.DILATION = [1]
    af.MIN_CHIP_SIZE = [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * (1 + len(zooms))
    af.MAX_CHIP_SIDE = 2048
    for key, value in overrides.items():
        setattr(af, key, value)
    return cfg


def write_coco(path, images):
    """images: list of (width, height, [xyxy boxes]); area = box area."""
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, (w, h, boxes) in enumerate(images, start=1):
        coco["images"].append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        for x0, y0, x1, y1 in boxes:
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i, "category_id": 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })
    with open(path, "w") as f:
        json.dump(coco, f)
    return str(path)


def analyze(tmp_path, images, cfg, settings, **kwargs):
    gt, _ = load_coco_ground_truth(write_coco(tmp_path / "gt.json", images))
    return analyze_oracle_chips(gt, cfg, settings, progress=False, **kwargs)


def setting(d, m, n=1):
    return ChipSetting((d,) * n, (float(m),) * n)


SMALL = (100, 100, 120, 120)  # r = 20 (COCO small); r0 = 10: a FocusPixel object at scale 0
MEDIUM = (300, 300, 350, 350)  # r = 50 (medium); r0 = 25: FocusPixel
LARGE = (0, 0, 200, 200)  # r = 200 (large); r0 = 100 > IGNORE_MAX: negative, found at scale 0
TINY = (400, 20, 406, 26)  # r = 6 (small); r0 = 3 < 5: ignored, no chip of its own


def test_hand_made_figures(tmp_path):
    # Image 1: SMALL's cell (3, 3) -> [48, 64] -> min size 64 -> [24, 88] -> original [48, 176].
    # Image 2: MEDIUM's cells 9..10 -> [144, 176] -> [128, 192] -> original [256, 384]; TINY is in
    # no chip (not recoverable), LARGE is recoverable at scale 0.
    out = analyze(tmp_path, [(512, 512, [SMALL]), (512, 512, [MEDIUM, LARGE, TINY])],
                  make_cfg(), [setting(1, 64)])
    assert out["objects"] == {"small": 2, "medium": 1, "large": 1, "all": 4}
    s = out["settings"][0]
    assert s["recall"] == {"small": 0.5, "medium": 1.0, "large": 1.0, "all": 0.75}
    assert s["pixel_ratio"] == pytest.approx((256 * 256 + 128 * 128) / PYRAMID_1)  # 0.25
    assert s["pixel_ratio"] == pytest.approx(0.25)
    assert [p["chips_per_image"] for p in s["per_scale"]] == [1.0, 1.0]
    assert s["per_scale"][0]["recoverable"] == {"small": 0, "medium": 0, "large": 1, "all": 1}
    assert s["per_scale"][1]["recoverable"] == {"small": 1, "medium": 1, "large": 0, "all": 2}
    assert s["per_scale"][1]["pixels_per_image"] == 128 * 128
    # The full pyramid holds TINY too (6 px >= SMALL_RANGE min at the last scale).
    assert out["pyramid"]["recall"]["small"] == 1.0
    assert out["pyramid"]["pixel_ratio"] == 1.0


def test_oracle_views_match_hand_computed_chips(tmp_path):
    cfg = make_cfg()
    gt, _ = load_coco_ground_truth(write_coco(tmp_path / "gt.json", [(512, 512, [SMALL, MEDIUM])]))
    policy = AutoFocusChipPolicy(thresholds=[0.5], dilations=[1], min_sizes=[64.0], max_chips=32)
    views = oracle_views(gt[0], CoarseToFinePipeline(cfg), policy, stride=16, small_range=(5, 64),
                         ignore_max=90)
    assert views[0] == [View(0, 0, (0, 0, 512, 512), (256, 256))]
    assert views[1] == [View(0, 1, (48, 48, 176, 176), (128, 128)),
                        View(0, 1, (256, 256, 384, 384), (128, 128))]


# TINY2 (r = 6.9, ignored at scale 0) lies just right of SMALL: in its chip only when the chip grows.
TINY2 = (172, 100, 180, 106)


@pytest.mark.parametrize(
    "dilation, min_size, small_recall, chip_side",
    [
        (1, 64, 0.5, 128),  # [48, 176]: TINY2 (x1 = 180) is cut
        (3, 64, 0.5, 128),  # cells 2..4 -> [32, 80] -> 64 around 56 -> [48, 176] again
        (5, 64, 1.0, 160),  # cells 1..5 -> [16, 96] -> original [32, 192]
        (1, 128, 1.0, 256),  # [48, 64] -> 128 around 56, shifted into the image: [0, 128] -> [0, 256]
    ],
)
def test_dilation_and_min_chip_size(tmp_path, dilation, min_size, small_recall, chip_side):
    out = analyze(tmp_path, [(512, 512, [SMALL, TINY2])], make_cfg(), [setting(dilation, min_size)])
    s = out["settings"][0]
    assert s["recall"]["small"] == small_recall
    assert s["pixel_ratio"] == pytest.approx((256 * 256 + chip_side**2) / PYRAMID_1)


def test_two_finer_scales_delegate_small_objects(tmp_path):
    # Finer zooms 1 and 2. SMALL: r0 = 10, r1 = 20 (a FocusPixel again at scale 1: delegated), r2 = 40.
    # Scale 1 chip (48, 48, 176, 176); SMALL there is [52, 72] -> cells 3..4 -> [48, 80] -> [32, 96]
    # -> original (80, 80, 144, 144) at zoom 2: 128 x 128.
    # M80: r = 80 (medium), r0 = 40 -> chip [136, 200] -> original (272, 272, 400, 400); r1 = 80 is
    # above SMALL_RANGE: recoverable at scale 1 (and ignored there, so no scale 2 chip).
    m80 = (300, 300, 380, 380)
    cfg = make_cfg(zooms=(1.0, 2.0))
    out = analyze(tmp_path, [(512, 512, [SMALL, m80])], cfg, [setting(1, 64, n=2)])
    s = out["settings"][0]
    assert s["recall"] == {"small": 1.0, "medium": 1.0, "large": None, "all": 1.0}
    assert [p["recoverable"]["small"] for p in s["per_scale"]] == [0, 0, 1]
    assert [p["recoverable"]["medium"] for p in s["per_scale"]] == [0, 1, 0]
    assert [p["chips_per_image"] for p in s["per_scale"]] == [1.0, 2.0, 1.0]
    assert s["pixel_ratio"] == pytest.approx((256 * 256 + 2 * 128 * 128 + 128 * 128) / PYRAMID_2)
    assert [p["resolution"] for p in s["per_scale"]] == [[256, 256], [512, -1], [1024, -1]]


def test_detectable_at_scale():
    r = torch.tensor([4.9, 5.0, 128.0, 130.0])
    boxes = torch.stack([torch.zeros(4), torch.zeros(4), r, r], dim=1)
    # Two scales (zoom 0.5, 1): scale 0 needs r0 > 64; the last scale r1 >= 5.
    got = detectable_at_scale(boxes, [0.5, 1.0], small_range=(5, 64), valid_ranges=[[-1, -1], [-1, -1]])
    assert got.tolist() == [[False, False, False, True], [False, True, True, True]]
    # VALID_RANGES (original pixels) apply with more than one scale.
    got = detectable_at_scale(boxes, [0.5, 1.0], small_range=(5, 64),
                              valid_ranges=[[129, -1], [-1, 100]])
    assert got.tolist() == [[False, False, False, True], [False, True, False, False]]
    # A single scale is the last one: only SMALL_RANGE min, no VALID_RANGES.
    got = detectable_at_scale(boxes, [1.0], small_range=(5, 64), valid_ranges=[[200, 300]])
    assert got.tolist() == [[False, True, True, True]]


def test_oracle_focus_map_clips_boxes_to_the_view():
    # 200 x 60 box (r = 110 > IGNORE_MAX: negative) of which 40 x 60 lies in the view: r = 49, positive.
    view = View(0, 1, (100, 100, 228, 228), (128, 128))
    fmap = oracle_focus_map(view, torch.tensor([[-60.0, 110.0, 140.0, 170.0]]), stride=16,
                            small_range=(5, 64), ignore_max=90)
    expected = torch.zeros(8, 8)
    expected[0:5, 0:3] = 1.0
    assert torch.equal(fmap, expected)


def test_chip_settings_config_first_without_duplicates():
    cfg = make_cfg(DILATION=[3], MIN_CHIP_SIZE=[128.0])
    got = chip_settings(cfg, [1, 3], [64, 128])
    assert got[0] == ChipSetting((3,), (128.0,), from_config=True)
    assert [(s.dilation[0], s.min_chip_size[0]) for s in got[1:]] == [(1, 64.0), (1, 128.0), (3, 64.0)]
    with pytest.raises(ValueError, match="dilation 0"):
        chip_settings(cfg, [0], [64])


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    return generate_synthetic_split(str(tmp_path_factory.mktemp("synth")), "tiny")


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Two finer scales, tiles at every scale (the first scale is 512 x 7xx > 400).
        {"SCALES": [[512, 768], [-1, -1], [1000, -1]], "VALID_RANGES": [[-1.0, -1.0]] * 3, "MAX_CHIP_SIDE": 400,
         "TILE_OVERLAP": 128},
    ],
)
def test_threshold_zero_is_the_pyramid(tiny_json, overrides):
    cfg = get_cfg()
    add_autofocus_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Synthetic", "autofocus_compact_fpn.yaml"))
    for key, value in overrides.items():
        setattr(cfg.MODEL.AUTOFOCUS, key, value)
    gt, _ = load_coco_ground_truth(tiny_json)
    out = analyze_oracle_chips(gt, cfg, [setting(1, 0), setting(3, 64)], threshold=0.0, progress=False)
    pyramid = out["pyramid"]
    for s in out["settings"]:
        # Every valid cell is focus: the chips are the whole image at every scale.
        assert s["pixel_ratio"] == 1.0
        assert s["recall"] == pyramid["recall"]
        chips = [p["chips_per_image"] for p in s["per_scale"]]
        assert chips == [p["chips_per_image"] for p in pyramid["per_scale"]]
    if not overrides:
        # No tiling: every synthetic object (>= 8 px at zoom 1) is recoverable.
        assert all(v == 1.0 for v in pyramid["recall"].values())


def test_errors(tmp_path):
    missing = str(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_coco_ground_truth(missing)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "width": 10, "height": 10}], "annotations": []}))
    with pytest.raises(ValueError, match="has no annotations"):
        load_coco_ground_truth(str(empty))
    path = write_coco(tmp_path / "gt.json", [(512, 512, [SMALL])])
    bad = make_cfg()
    bad.MODEL.FOCUS_HEAD.SMALL_RANGE = [70.0, 10.0]
    with pytest.raises(ValueError, match="MODEL.FOCUS_HEAD.SMALL_RANGE"):
        run_oracle_analysis(path, bad, progress=False)
    with pytest.raises(ValueError, match="max_images"):
        load_coco_ground_truth(path, max_images=0)


def load_tool():
    spec = importlib.util.spec_from_file_location("analyze_chips", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_errors_name_the_problem(tmp_path, capsys):
    tool = load_tool()
    assert tool.main([str(tmp_path / "nowhere.json"), "--no-progress"]) == 2
    assert "nowhere.json" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "width": 10, "height": 10}]}))
    assert tool.main([str(empty), "--no-progress"]) == 2
    assert "no annotations" in capsys.readouterr().err


def test_cli_end_to_end(tiny_json, tmp_path):
    report_path = tmp_path / "out" / "report.json"
    proc = subprocess.run(
        [sys.executable, TOOL, tiny_json, "--dilations", "1", "3", "--min-chip-sizes", "64", "128",
         "--output", str(report_path), "--opts", "MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE", "16",
         "MODEL.AUTOFOCUS.MIN_CHIP_SIZE", "[128.0]", "MODEL.AUTOFOCUS.DILATION", "[3]"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr
    assert "pixel ratio" in proc.stdout and "pyramid" in proc.stdout
    report = json.loads(report_path.read_text())
    for key in ("annotations", "images", "objects", "skipped_annotations", "recoverable_definition",
                "scale_chain", "focus_labels", "sweep", "settings", "pyramid", "config_file", "opts",
                "seconds"):
        assert key in report
    assert report["images"] == 6
    assert report["scale_chain"]["max_chips_per_image"] == 16
    # The config's (3, 128), then (1, 64), (1, 128), (3, 64).
    assert [(s["dilation"], s["min_chip_size"], s["from_config"]) for s in report["settings"]] == [
        ([3], [128.0], True), ([1], [64.0], False), ([1], [128.0], False), ([3], [64.0], False)]
    assert report["pyramid"]["pixel_ratio"] == 1.0
    for s in report["settings"] + [report["pyramid"]]:
        assert 0.0 < s["pixel_ratio"] <= 1.0
        for cls, value in s["recall"].items():
            assert value is None or 0.0 <= value <= 1.0
            assert s["recoverable"][cls] <= report["objects"][cls]
        assert len(s["per_scale"]) == 2
        for p in s["per_scale"]:
            assert 0.0 <= p["pixel_ratio"] <= 1.0
            assert set(p) == {"scale", "resolution", "chips_per_image", "pixels_per_image",
                              "pyramid_pixels_per_image", "pixel_ratio", "recoverable"}
        total = sum(p["pixels_per_image"] for p in s["per_scale"])
        assert total == pytest.approx(s["pixels_per_image"])
        assert total == pytest.approx(s["pixel_ratio"] * s["pyramid_pixels_per_image"])


def test_load_coco_ground_truth_size_classes_and_skips(tmp_path):
    path = write_coco(tmp_path / "gt.json", [(100, 80, [(0, 0, 32, 31), (0, 0, 32, 32), (0, 0, 96, 96)]),
                                             (50, 50, [(10, 10, 10, 20)])])  # zero width: skipped
    coco = json.loads(open(path).read())
    coco["annotations"][0]["iscrowd"] = 1
    with open(path, "w") as f:
        json.dump(coco, f)
    images, skipped = load_coco_ground_truth(path)
    assert skipped == {"crowd": 1, "empty": 1}
    assert [im.image_hw for im in images] == [(80, 100), (50, 50)]
    assert images[0].boxes.tolist() == [[0, 0, 32, 32], [0, 0, 96, 96]]
    assert images[0].size_class.tolist() == [1, 2]  # area 32^2: medium; 96^2: large
    assert len(images[1].boxes) == 0
    assert len(load_coco_ground_truth(path, max_images=1)[0]) == 1
