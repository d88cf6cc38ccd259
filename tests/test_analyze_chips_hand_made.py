"""Oracle FocusChip analysis (autofocus_d2.analysis) on hand-made COCO files, figure by figure:
recall, pixel ratio, recoverable objects per scale and size holes, against chips computed by hand
for each dilation, minimum chip size, border margin, valid range and second finer scale.

Hand-made COCO files on 512 x 512 images with scale 0 [256, 256]: scale 0 is the image at zoom
0.5, so a box [x0, y0, x1, y1] is [x0/2, y0/2, x1/2, y1/2] at scale 0, and the focus stride is 16.
Stacking: BORDER_MARGIN 10, SMALL_DROP_SIZE 64 (a scale-0 box inside a finer chip is dropped below
128 original px), open valid ranges unless a test says otherwise. test_analyze_chips.py imports
``make_cfg``, ``write_coco``, ``setting`` and ``SMALL`` from here.
"""
import json

import pytest
import torch
from detectron2.config import get_cfg

from autofocus_d2 import add_autofocus_config
from autofocus_d2.analysis import (
    ChipSetting,
    analyze_oracle_chips,
    format_holes,
    load_coco_ground_truth,
    oracle_chip_policy,
    oracle_focus_map,
    oracle_views,
)
from autofocus_d2.inference.pipeline import CoarseToFinePipeline
from autofocus_d2.structures.views import View


# Whole 512 x 512 image at scale 0 (256 x 256) and at zoom 1 (512 x 512).
PYRAMID_1 = 256 * 256 + 512 * 512
PYRAMID_2 = PYRAMID_1 + 1024 * 1024  # with a second finer scale at zoom 2


def make_cfg(zooms=(1.0,), **overrides):
    """Scale 0 [256, 256], then finer scales whose zoom on the 512 x 512 test images is ``zooms``.
    ``overrides``: MODEL.AUTOFOCUS keys, or MODEL.FOCUS_HEAD keys prefixed ``HEAD_``."""
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    af.SCALES = [[256, 256]] + [[512 * z, -1] for z in zooms]
    af.FOCUS_THRESHOLD = [0.5]
    af.DILATION = [1]
    af.MIN_CHIP_SIZE = [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * (1 + len(zooms))
    af.MAX_CHIP_SIDE = 2048
    af.BORDER_MARGIN = 10.0
    af.SMALL_DROP_SIZE = 64.0
    cfg.MODEL.FOCUS_HEAD.SMALL_MIN_FRAME = "input"
    for key, value in overrides.items():
        node, name = (cfg.MODEL.FOCUS_HEAD, key[5:]) if key.startswith("HEAD_") else (af, key)
        setattr(node, name, value)
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
LARGE = (0, 0, 200, 200)  # r = 200 (large); r0 = 100 > IGNORE_MAX: negative, kept at scale 0
TINY = (400, 20, 406, 26)  # r = 6 (small); r0 = 3 < 5: ignored, no chip of its own (paper's rule)


def test_hand_made_figures(tmp_path):
    # Image 1: SMALL's cell (3, 3) -> [48, 64] -> min size 64 -> [24, 88] -> original [48, 176].
    # Image 2: MEDIUM's cells 9..10 -> [144, 176] -> [128, 192] -> original [256, 384].
    # SMALL and MEDIUM lie in the trusted part of their chips and are below 128 px: scale 0 drops
    # them, their chips keep them. LARGE is kept at scale 0. TINY is in no chip: scale 0 keeps it.
    out = analyze(tmp_path, [(512, 512, [SMALL]), (512, 512, [MEDIUM, LARGE, TINY])],
                  make_cfg(), [setting(1, 64)])
    assert out["objects"] == {"small": 2, "medium": 1, "large": 1, "all": 4}
    s = out["settings"][0]
    assert s["recall"] == {"small": 1.0, "medium": 1.0, "large": 1.0, "all": 1.0}
    assert s["pixel_ratio"] == pytest.approx((256 * 256 + 128 * 128) / PYRAMID_1)  # 0.25
    assert s["pixel_ratio"] == pytest.approx(0.25)
    assert [p["chips_per_image"] for p in s["per_scale"]] == [1.0, 1.0]
    assert s["per_scale"][0]["recoverable"] == {"small": 1, "medium": 0, "large": 1, "all": 2}
    assert s["per_scale"][1]["recoverable"] == {"small": 1, "medium": 1, "large": 0, "all": 2}
    assert s["per_scale"][0]["finest"] == {"small": 1, "medium": 0, "large": 1, "all": 2}
    assert s["per_scale"][1]["pixels_per_image"] == 128 * 128
    # The full pyramid: below 128 px everything is left to scale 1; LARGE is kept at both scales.
    p = out["pyramid"]
    assert p["recall"]["all"] == 1.0 and p["pixel_ratio"] == 1.0
    assert p["per_scale"][0]["recoverable"] == {"small": 0, "medium": 0, "large": 1, "all": 1}
    assert p["per_scale"][1]["finest"] == {"small": 2, "medium": 1, "large": 1, "all": 4}


def test_small_min_frame_next_scale_gives_tiny_objects_a_chip(tmp_path):
    # With the lower bound measured at scale 1 (zoom step 2): 5 / 2 = 2.5 <= r0 = 3, so TINY is a
    # FocusPixel: cell (0, 12) -> [192, 208] x [0, 16] -> 64 px, shifted into the image ->
    # original (336, 0, 464, 128), which keeps TINY; scale 0 drops its copy (covered, small).
    images = [(512, 512, [MEDIUM, LARGE, TINY])]
    paper = analyze(tmp_path, images, make_cfg(), [setting(1, 64)])["settings"][0]
    nxt = analyze(tmp_path, images, make_cfg(HEAD_SMALL_MIN_FRAME="next_scale"), [setting(1, 64)])["settings"][0]
    assert paper["per_scale"][0]["finest"]["small"] == 1
    assert nxt["per_scale"][0]["finest"]["small"] == 0
    assert nxt["per_scale"][1]["recoverable"]["small"] == 1
    assert [p["chips_per_image"] for p in nxt["per_scale"]] == [1.0, 2.0]
    assert nxt["pixel_ratio"] == pytest.approx((256 * 256 + 2 * 128 * 128) / PYRAMID_1)


def test_oracle_views_match_hand_computed_chips(tmp_path):
    cfg = make_cfg()
    gt, _ = load_coco_ground_truth(write_coco(tmp_path / "gt.json", [(512, 512, [SMALL, MEDIUM])]))
    views = oracle_views(gt[0], CoarseToFinePipeline(cfg), oracle_chip_policy(cfg), stride=16)
    assert views[0] == [View(0, 0, (0, 0, 512, 512), (256, 256))]
    assert views[1] == [View(0, 1, (48, 48, 176, 176), (128, 128)),
                        View(0, 1, (256, 256, 384, 384), (128, 128))]


# TINY2 (r = 6.9, ignored at scale 0) lies just right of SMALL: in its chip only when the chip grows.
TINY2 = (172, 100, 180, 106)


@pytest.mark.parametrize(
    "dilation, min_size, only_s0, chip_side",
    [
        (1, 64, 1, 128),  # [48, 176]: TINY2 (x1 = 180) is cut, kept at scale 0 (not covered)
        (3, 64, 1, 128),  # cells 2..4 -> [32, 80] -> 64 around 56 -> [48, 176] again
        (5, 64, 0, 160),  # cells 1..5 -> [16, 96] -> original [32, 192]: 12 px from the edge
        (1, 128, 0, 256),  # [48, 64] -> 128 around 56, shifted into the image: [0, 128] -> [0, 256]
    ],
)
def test_dilation_and_min_chip_size(tmp_path, dilation, min_size, only_s0, chip_side):
    out = analyze(tmp_path, [(512, 512, [SMALL, TINY2])], make_cfg(), [setting(dilation, min_size)])
    s = out["settings"][0]
    assert s["recall"]["small"] == 1.0
    assert s["per_scale"][0]["finest"]["small"] == only_s0
    assert s["pixel_ratio"] == pytest.approx((256 * 256 + chip_side**2) / PYRAMID_1)


def test_border_margin_keeps_the_coarse_copy(tmp_path):
    # TINY3 is 6 px from the inner right edge of SMALL's chip [48, 176]: the chip drops its copy
    # (border rule), and it lies outside the chip's trusted part, so scale 0 keeps it.
    tiny3 = (160, 130, 170, 136)
    s = analyze(tmp_path, [(512, 512, [SMALL, tiny3])], make_cfg(), [setting(1, 64)])["settings"][0]
    assert s["recall"]["small"] == 1.0
    assert s["per_scale"][1]["recoverable"]["small"] == 1  # SMALL only
    assert s["per_scale"][0]["recoverable"]["small"] == 1  # tiny3 only


def test_valid_ranges_with_small_drop_lose_covered_objects(tmp_path):
    # Scale 1 keeps r <= 40; scale 0 drops r < 128 inside a chip. M80 (r = 80, r0 = 40: a
    # FocusPixel, so inside its chip) is kept by neither; without the small-drop rule scale 0
    # keeps it. LARGE (r = 200) is kept at scale 0 either way.
    m80 = (300, 300, 380, 380)
    images = [(512, 512, [m80, LARGE])]
    ranges = [[-1.0, -1.0], [-1.0, 40.0]]
    out = analyze(tmp_path, images, make_cfg(VALID_RANGES=ranges), [setting(1, 64)])
    assert out["settings"][0]["recall"] == {"small": None, "medium": 0.0, "large": 1.0, "all": 0.5}
    assert out["pyramid"]["recall"]["medium"] == 0.0
    # The size holes say why: none by the valid ranges alone, (40, 128) for covered objects.
    assert out["holes"]["anywhere"]["holes"] == [{"image_hw": [512, 512], "holes": []}]
    assert out["holes"]["covered"]["holes"] == [{"image_hw": [512, 512], "holes": [[40.0, 128.0]]}]
    assert out["holes"]["covered"]["objects_in_holes"] == {"small": 0, "medium": 1, "large": 0, "all": 1}
    kept = analyze(tmp_path, images, make_cfg(VALID_RANGES=ranges, SMALL_DROP_SIZE=0.0), [setting(1, 64)])
    assert kept["settings"][0]["recall"]["all"] == 1.0
    assert kept["settings"][0]["per_scale"][0]["recoverable"]["medium"] == 1
    text = format_holes(out)
    assert "(40.0, 128.0)" in text and "objects in a hole: 1 (0 small, 1 medium, 0 large)" in text


def test_two_finer_scales_delegate_small_objects(tmp_path):
    # Finer zooms 1 and 2. SMALL: r0 = 10, r1 = 20 (a FocusPixel again at scale 1), r2 = 40.
    # Scale 1 chip (48, 48, 176, 176); SMALL there is [52, 72] -> cells 3..4 -> [48, 80] -> [32, 96]
    # -> original (80, 80, 144, 144) at zoom 2: 128 x 128. SMALL is small and covered at scales 0
    # and 1: only scale 2 keeps it.
    # M80: r = 80 (medium), r0 = 40 -> chip [136, 200] -> original (272, 272, 400, 400); r1 = 80 is
    # above SMALL_RANGE (no scale-2 chip): kept at scale 1, dropped at scale 0 (covered, < 128).
    m80 = (300, 300, 380, 380)
    cfg = make_cfg(zooms=(1.0, 2.0))
    out = analyze(tmp_path, [(512, 512, [SMALL, m80])], cfg, [setting(1, 64, n=2)])
    s = out["settings"][0]
    assert s["recall"] == {"small": 1.0, "medium": 1.0, "large": None, "all": 1.0}
    assert [p["recoverable"]["small"] for p in s["per_scale"]] == [0, 0, 1]
    assert [p["recoverable"]["medium"] for p in s["per_scale"]] == [0, 1, 0]
    assert [p["chips_per_image"] for p in s["per_scale"]] == [1.0, 2.0, 1.0]
    assert s["pixel_ratio"] == pytest.approx((256 * 256 + 2 * 128 * 128) / PYRAMID_2 + 128 * 128 / PYRAMID_2)
    assert [p["resolution"] for p in s["per_scale"]] == [[256, 256], [512, -1], [1024, -1]]


def test_oracle_focus_map_clips_boxes_to_the_view():
    # 200 x 60 box (r = 110 > IGNORE_MAX: negative) of which 40 x 60 lies in the view: r = 49, positive.
    view = View(0, 1, (100, 100, 228, 228), (128, 128))
    fmap = oracle_focus_map(view, torch.tensor([[-60.0, 110.0, 140.0, 170.0]]), stride=16,
                            small_range=(5, 64), ignore_max=90)
    expected = torch.zeros(8, 8)
    expected[0:5, 0:3] = 1.0
    assert torch.equal(fmap, expected)
