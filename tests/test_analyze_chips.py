"""Oracle FocusChip analysis (autofocus_d2.analysis) as a whole and its CLI tools/analyze_chips.py:
chip settings, whole-image chips equal the pyramid, COCO ground truth loading and errors, the
analysis' "recoverable" is what the pipeline keeps (planted perfect detections), and size holes.

The hand-made figures, and the helpers used here (``make_cfg``: scale 0 [256, 256] on 512 x 512
images, ``write_coco``, ``setting``, the box ``SMALL``), are in test_analyze_chips_hand_made.py.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from detectron2.structures import Boxes, Instances

from autofocus_d2.analysis import (
    ChipSetting,
    GroundTruthImage,
    analyze_oracle_chips,
    chip_settings,
    in_size_holes,
    kept_size_intervals,
    load_coco_ground_truth,
    objects_in_holes,
    oracle_chip_policy,
    oracle_views,
    perfect_detections,
    recoverable_per_scale,
    run_oracle_analysis,
    size_holes,
)
from autofocus_d2.inference.chip_policies import build_chip_policy
from autofocus_d2.inference.pipeline import CoarseToFinePipeline
from tests.test_analyze_chips_hand_made import SMALL, make_cfg, setting, write_coco


def test_chip_settings_config_first_without_duplicates():
    cfg = make_cfg(DILATION=[3], MIN_CHIP_SIZE=[128.0])
    got = chip_settings(cfg, [1, 3], [64, 128])
    assert got[0] == ChipSetting((3,), (128.0,), from_config=True)
    assert [(s.dilation[0], s.min_chip_size[0]) for s in got[1:]] == [(1, 64.0), (1, 128.0), (3, 64.0)]
    with pytest.raises(ValueError, match="dilation 0"):
        chip_settings(cfg, [0], [64])


@pytest.fixture(scope="module")
def tiny_json(tiny_coco):
    return tiny_coco[0]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Two finer scales. (Not with tiles: a chip spans at most its parent view, a tile.)
        {"SCALES": [[512, 768], [-1, -1], [1000, -1]], "VALID_RANGES": [[-1.0, -1.0]] * 3},
    ],
)
def test_whole_image_chips_are_the_pyramid(compact_cfg, tiny_json, overrides):
    # A minimum chip larger than any image: every chip spans the whole image, so (on images with a
    # FocusPixel at every transition) the views and the figures are the full pyramid's.
    cfg = compact_cfg(**overrides)
    gt, _ = load_coco_ground_truth(tiny_json)
    n = len(cfg.MODEL.AUTOFOCUS.SCALES) - 1
    pipeline = CoarseToFinePipeline(cfg)
    policy = oracle_chip_policy(cfg, ChipSetting((3,) * n, (10000.0,) * n))
    assert all(oracle_views(im, pipeline, policy, stride=16) == pipeline.pyramid_views(im.image_hw) for im in gt)
    out = analyze_oracle_chips(gt, cfg, [setting(3, 10000.0, n)], progress=False)
    pyramid, s = out["pyramid"], out["settings"][0]
    assert s["pixel_ratio"] == 1.0
    for key in ("recall", "recoverable", "chips_per_image"):
        assert s[key] == pyramid[key]
    assert s["per_scale"] == pyramid["per_scale"]
    if not overrides:
        # No tiling, no valid ranges: every object is recoverable.
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
    from tools import analyze_chips

    return analyze_chips


def test_cli_errors_name_the_problem(tmp_path, capsys):
    tool = load_tool()
    assert tool.main([str(tmp_path / "nowhere.json"), "--no-progress"]) == 2
    assert "nowhere.json" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "width": 10, "height": 10}]}))
    assert tool.main([str(empty), "--no-progress"]) == 2
    assert "no annotations" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_end_to_end(repo_root, tiny_json, tmp_path):
    report_path = tmp_path / "out" / "report.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(repo_root, "tools", "analyze_chips.py"), tiny_json, "--dilations", "1", "3", "--min-chip-sizes", "64", "128",
         "--output", str(report_path), "--opts", "MODEL.AUTOFOCUS.MAX_CHIPS_PER_IMAGE", "16",
         "MODEL.AUTOFOCUS.MIN_CHIP_SIZE", "[128.0]", "MODEL.AUTOFOCUS.DILATION", "[3]"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.returncode == 0, proc.stderr
    assert "pixel ratio" in proc.stdout and "pyramid" in proc.stdout
    assert "Size holes" in proc.stdout and "objects in a hole: 0" in proc.stdout
    report = json.loads(report_path.read_text())
    for key in ("annotations", "images", "objects", "skipped_annotations", "recoverable_definition",
                "scale_chain", "stacking", "focus_labels", "sweep", "settings", "pyramid", "holes",
                "config_file", "opts", "seconds"):
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
                              "pyramid_pixels_per_image", "pixel_ratio", "recoverable", "finest"}
        for c in s["recoverable"]:  # each recoverable object has one finest scale
            assert sum(p["finest"][c] for p in s["per_scale"]) == s["recoverable"][c]
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


# ---------------------------------------------------------------------------------------------
# The analysis' "recoverable" is what the pipeline keeps: planted perfect detections
# ---------------------------------------------------------------------------------------------


def random_boxes(generator, image_hw, n):
    """n float boxes inside the image, sqrt(area) log-uniform in [4, 200] px, aspect 0.5-2."""
    h, w = image_hw
    size = torch.exp(torch.empty(n).uniform_(math.log(4), math.log(200), generator=generator))
    aspect = torch.exp(torch.empty(n).uniform_(math.log(0.5), math.log(2), generator=generator))
    bw, bh = (size * aspect.sqrt()).clamp(max=w - 2), (size / aspect.sqrt()).clamp(max=h - 2)
    x0 = torch.rand(n, generator=generator) * (w - bw)
    y0 = torch.rand(n, generator=generator) * (h - bh)
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)


CHAINS = {
    # zooms 0.5 / 1 on 600 x 900; a hole (60, 80) between the two valid ranges.
    "2 scales": dict(SCALES=[[300, 450], [-1, -1]], VALID_RANGES=[[80.0, -1.0], [-1.0, 60.0]],
                     DILATION=[1], MIN_CHIP_SIZE=[64.0], MAX_CHIP_SIDE=2048),
    # zooms 0.5 / 1 / 2; a hole (80, 96); scale-2 chips longer than 400 px run as tiles.
    "3 scales": dict(SCALES=[[300, 450], [-1, -1], [1200, -1]],
                     VALID_RANGES=[[96.0, -1.0], [20.0, 80.0], [-1.0, 24.0]],
                     DILATION=[1, 3], MIN_CHIP_SIZE=[64.0, 96.0], MAX_CHIP_SIDE=400, TILE_OVERLAP=64),
}


@pytest.mark.parametrize("small_drop_size", [0.0, 48.0])
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_recoverable_is_what_the_pipeline_keeps(ground_truth_detector, make_coordinate_image, chain,
                                                small_drop_size):
    cfg = make_cfg(**CHAINS[chain], SMALL_DROP_SIZE=small_drop_size, CHIP_POLICY="oracle",
                   NMS_METHOD="nms", DETECTIONS_PER_IMAGE=1000, HEAD_SMALL_MIN_FRAME="next_scale")
    generator = torch.Generator().manual_seed(15)
    sizes = [(600, 900), (500, 820)]
    gts = [random_boxes(generator, hw, 60) for hw in sizes]
    inputs = []
    for i, (hw, gt) in enumerate(zip(sizes, gts)):
        inst = Instances(hw)
        inst.gt_boxes = Boxes(gt)
        inputs.append({"image": make_coordinate_image(hw, i), "instances": inst})
    pipeline = CoarseToFinePipeline(cfg)
    outputs = pipeline(ground_truth_detector(gts), inputs, with_details=True)
    holes = dict(size_holes(pipeline.scale_chain, pipeline.valid_ranges, sizes))
    num_lost = 0
    for i, (hw, gt, out) in enumerate(zip(sizes, gts, outputs)):
        image = GroundTruthImage(i, hw, gt, torch.zeros(len(gt), dtype=torch.long))
        views = oracle_views(image, pipeline, build_chip_policy(cfg), stride=16)
        # The analysis sees the views the pipeline ran (its own policy and view building).
        got_views = out["autofocus_details"]["views_per_scale"]
        assert [[v.box for v in vs] for vs in views] == [[v.box for v in vs] for vs in got_views]
        rec = recoverable_per_scale(perfect_detections(image), hw, views, pipeline).any(dim=0)
        survivors = set(out["instances"].pred_classes.tolist())
        assert survivors == set(rec.nonzero().flatten().tolist())
        num_lost += len(gt) - len(survivors)
        # Objects in a size hole are never kept; the hole is not empty here.
        in_hole = in_size_holes(gt, holes[hw])
        assert in_hole.any() and not (rec & in_hole).any()
    assert 0 < num_lost < sum(len(g) for g in gts)


# ---------------------------------------------------------------------------------------------
# Size holes
# ---------------------------------------------------------------------------------------------


def test_size_holes_of_a_planted_chain():
    # Zooms on 1080 x 1920: 512 / 1920 and 1280 / 1920 (both capped by the longer side).
    chain = [[480, 512], [800, 1280]]
    holes = size_holes(chain, [[281.0, -1.0], [-1.0, 270.0]], [(1080, 1920), (765, 1360), (1080, 1920)])
    assert holes == [((1080, 1920), [(270.0, 281.0)]), ((765, 1360), [(270.0, 281.0)])]
    # Overlapping or touching ranges leave none; a lower bound on every scale leaves (0, lo).
    assert size_holes(chain, [[75.0, -1.0], [32.0, 75.0]], [(1080, 1920)]) == [((1080, 1920), [(0.0, 32.0)])]
    assert size_holes(chain, [[-1.0, -1.0], [-1.0, -1.0]], [(1080, 1920)]) == [((1080, 1920), [])]
    # An upper bound on every scale: (hi, inf).
    assert size_holes(chain, [[-1.0, 100.0], [-1.0, 50.0]], [(100, 100)]) == [((100, 100), [(100.0, math.inf)])]
    # A single scale applies no valid range (as stacking).
    assert size_holes([[480, 512]], [[281.0, 300.0]], [(1080, 1920)]) == [((1080, 1920), [])]


def test_size_holes_with_the_small_drop_rule_depend_on_the_zoom():
    # The COCO chain's valid ranges leave no hole; with SMALL_DROP_SIZE 64 a covered object is
    # dropped at scale 0 below 64 / zoom0 and at scale 1 below 64 / zoom1 original px.
    chain = [[480, 512], [800, 1280], [1400, 2000]]
    ranges = [[75.0, -1.0], [32.0, 180.0], [-1.0, 75.0]]
    assert size_holes(chain, ranges, [(1080, 1920), (480, 640)]) == [((1080, 1920), []), ((480, 640), [])]
    z0, z1 = 512 / 1920, 1280 / 1920
    assert kept_size_intervals([z0, z1, 1.0], ranges, small_drop_size=64.0) == [
        (64 / z0, math.inf), (64 / z1, 180.0), (0.0, 75.0)]
    got = size_holes(chain, ranges, [(1080, 1920), (480, 640)], small_drop_size=64.0)
    assert got[0][0] == (1080, 1920)
    assert got[0][1] == [(pytest.approx(75.0), pytest.approx(64 / z1)), (pytest.approx(180.0), pytest.approx(64 / z0))]
    # 480 x 640: zooms 0.8 and 800 / 480; 64 / 0.8 = 80 < 180, 64 * 480 / 800 = 38.4 < 75: no hole.
    assert got[1] == ((480, 640), [])


def test_objects_in_holes_counts_boxes_by_their_image_size():
    holes = size_holes([[480, 512], [800, 1280]], [[281.0, -1.0], [-1.0, 270.0]], [(1080, 1920)])
    boxes = torch.tensor([[0.0, 0.0, 275.0, 275.0], [0.0, 0.0, 270.0, 270.0], [0.0, 0.0, 281.0, 281.0],
                          [0.0, 0.0, 250.0, 300.0]])  # 275, 270, 281, 273.9 px
    assert in_size_holes(boxes, holes[0][1]).tolist() == [True, False, False, True]
    assert objects_in_holes([boxes, boxes[:1]], [(1080, 1920), (1080, 1920)], holes) == 3
    with pytest.raises(ValueError, match=r"no holes computed for image size \(10, 10\)"):
        objects_in_holes([boxes], [(10, 10)], holes)
    with pytest.raises(ValueError, match="2 valid ranges for 1 scales"):
        size_holes([[480, 512]], [[1, 2], [3, 4]], [(10, 10)])
