"""Chip canvases: packing (property tests), mapping detections back to their chip, and canvas
passes against per-chip passes on the planted detector (tests/stand_in_detectors.py)."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from hypothesis import given, settings
from hypothesis import strategies as st

from autofocus_d2 import add_autofocus_config
from autofocus_d2.config import validate_autofocus_config
from autofocus_d2.inference.chip_canvas import (
    Placement,
    canvas_alignment,
    canvas_proposal_budget,
    check_canvas_shapes,
    chip_focus_map,
    chip_instances,
    pack_chips,
)
from autofocus_d2.inference.pipeline import build_autofocus_pipeline

SHAPE_SETS = [[(512, 512), (1024, 1024)], [(256, 512)], [(384, 384), (768, 1024), (512, 256)]]


def up(v, a=32):
    return -(-v // a) * a


@settings(max_examples=200, deadline=None)
@given(
    hws=st.lists(st.tuples(st.integers(1, 1100), st.integers(1, 1100)), min_size=0, max_size=30),
    shapes=st.sampled_from(SHAPE_SETS),
    gap=st.sampled_from([0, 16, 64, 100]),
)
def test_every_chip_placed_once_without_overlap_in_configured_shapes(hws, shapes, gap):
    plan = pack_chips(hws, shapes, gap=gap, align=32)
    assert set(plan.shapes) <= set(shapes)
    assert sorted(i for m in plan.members for i in m) == sorted(i for i, p in enumerate(plan.placements) if p)
    for i, p in enumerate(plan.placements):
        h, w = hws[i]
        fits_some = any(up(h) <= H and up(w) <= W for H, W in shapes)
        assert (p is not None) == fits_some  # only a chip larger than every canvas is left out
        if p is None:
            continue
        assert i in plan.members[p.canvas]
        H, W = plan.shapes[p.canvas]
        assert p.x % 32 == 0 and p.y % 32 == 0
        assert p.x + up(w) <= W and p.y + up(h) <= H  # the padded chip lies inside its canvas
    for members in plan.members:
        assert members
        for a in members:
            for b in members:
                if a >= b:
                    continue
                pa, pb = plan.placements[a], plan.placements[b]
                (ha, wa), (hb, wb) = hws[a], hws[b]
                # Apart by at least the gap along x or y (pixels), and padded extents disjoint.
                assert (pa.x + wa + gap <= pb.x or pb.x + wb + gap <= pa.x
                        or pa.y + ha + gap <= pb.y or pb.y + hb + gap <= pa.y), (a, b)
                assert (pa.x + up(wa) <= pb.x or pb.x + up(wb) <= pa.x
                        or pa.y + up(ha) <= pb.y or pb.y + up(hb) <= pa.y), (a, b)
    assert plan == pack_chips(hws, shapes, gap=gap, align=32)


def test_chips_take_the_smallest_canvas_that_holds_them_together():
    # Two 200 x 200 chips with a 64 px gap: x = 0 and 288 (200 + 64, rounded up to 32): one
    # 512 x 512 canvas. With a 600 x 300 chip, which needs 1024 x 1024, all three share that one
    # (one pass of 1 Mpix instead of two of 1.26); a 1100 px chip fits no canvas.
    shapes = [(512, 512), (1024, 1024)]
    plan = pack_chips([(200, 200), (200, 200)], shapes, gap=64, align=32)
    assert plan.shapes == [(512, 512)] and plan.members == [[0, 1]]
    assert sorted(p.x for p in plan.placements) == [0, 288]
    plan = pack_chips([(200, 200), (200, 200), (600, 300), (1100, 10)], shapes, gap=64, align=32)
    assert plan.unplaced == [3]
    assert plan.shapes == [(1024, 1024)] and plan.members == [[0, 1, 2]]


def test_shapes_and_gap_are_checked():
    assert check_canvas_shapes([[1024, 1024], [512, 512]], 32) == [(512, 512), (1024, 1024)]
    with pytest.raises(ValueError, match="CHIP_CANVASES"):
        check_canvas_shapes([[500, 512]], 32)
    with pytest.raises(ValueError, match="gap"):
        pack_chips([(10, 10)], [(64, 64)], gap=-1, align=32)
    cfg = get_cfg()
    add_autofocus_config(cfg)
    cfg.MODEL.AUTOFOCUS.CHIP_CANVAS_GAP = -4
    with pytest.raises(ValueError, match="CHIP_CANVAS_GAP"):
        validate_autofocus_config(cfg)
    assert canvas_alignment(32, 16) == 32 and canvas_alignment(0, 16) == 16 and canvas_alignment(24, 16) == 48


def test_proposal_budget_comes_from_the_chips_areas():
    # 0.04 and 0.5 Mpix at 500 per Mpix, at least 100: 100 + 250 (a 1 Mpix canvas would give 500).
    assert canvas_proposal_budget([200 * 200, 500 * 1000], 500.0, 100) == 350
    assert canvas_proposal_budget([200 * 200], 0.0, 100) is None


def test_detections_go_back_to_their_chip_and_frame_and_gap_crossers_are_dropped():
    hws = [(100, 200), (100, 100)]
    plan = pack_chips(hws, [(256, 512)], gap=64, align=32)
    assert plan.placements == [Placement(0, 0, 0), Placement(0, 288, 0)]
    inst = Instances((256, 512))
    inst.pred_boxes = Boxes(torch.tensor([
        [10.0, 20.0, 50.0, 60.0],    # chip 0
        [300.0, 5.0, 330.0, 40.0],   # chip 1 -> (12, 5, 42, 40)
        [180.0, 10.0, 215.0, 50.0],  # chip 0, 15 px into the gap (< 32): clipped to x1 = 200
        [150.0, 10.0, 300.0, 50.0],  # centre in the gap's first half, reaches chip 1: dropped
        [390.0, 90.0, 420.0, 140.0],  # chip 1, 40 px below it (> 32): dropped
    ]))
    inst.scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    inst.pred_classes = torch.tensor([0, 1, 2, 3, 4])
    inst.pred_keypoints = torch.tensor([[[20.0, 30.0, 1.0]], [[310.0, 10.0, 1.0]], [[190.0, 20.0, 1.0]],
                                        [[200.0, 20.0, 1.0]], [[400.0, 95.0, 1.0]]])
    first, second = chip_instances(inst, [0, 1], plan, hws, 64)
    assert first.image_size == (100, 200) and second.image_size == (100, 100)
    assert first.pred_boxes.tensor.tolist() == [[10, 20, 50, 60], [180, 10, 200, 50]]
    assert first.pred_classes.tolist() == [0, 2]
    assert second.pred_boxes.tensor.tolist() == [[12, 5, 42, 40]]
    assert second.pred_keypoints.tolist() == [[[22.0, 10.0, 1.0]]]
    assert second.scores.tolist() == [pytest.approx(0.8)]


def test_focus_map_of_a_chip_is_its_slice_of_the_canvas_map():
    focus = torch.arange(16 * 32, dtype=torch.float32).view(16, 32)  # stride 16: a 256 x 512 canvas
    cells = chip_focus_map(focus, Placement(0, 288, 32), (100, 100), 16, 32)
    # 100 px padded to 128 = 8 cells of 16; from row 2, column 18.
    assert cells.shape == (8, 8) and cells[0, 0] == 2 * 32 + 18


def canvas_cfg(canvases, **overrides):
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    # A 1000 x 1400 image: zoom 0.5 at scale 0, chips at the original resolution.
    af.SCALES = [[500, 700], [-1, -1]]
    af.FOCUS_THRESHOLD = [0.5]
    af.DILATION = [1]
    af.MIN_CHIP_SIZE = [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * 2
    af.CHIP_CANVASES = canvases
    af.CHIP_CANVAS_GAP = 64
    for key, value in overrides.items():
        setattr(af, key, value)
    return cfg


def run_pipeline(cfg, model, images):
    pipeline = build_autofocus_pipeline(cfg)
    with torch.no_grad():
        return pipeline(model, [{"image": img} for img in images], with_details=True)


def detections(out):
    inst = out["instances"]
    return sorted(zip(inst.pred_classes.tolist(), inst.pred_boxes.tensor.round().tolist(), inst.scores.tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_canvas_passes_give_the_per_chip_detections_on_the_planted_detector(planted_detector, paint_image, seed):
    g = torch.Generator().manual_seed(seed)
    objects = []
    for _ in range(12):  # small objects of channels 1 and 2 (FocusPixels) and a few large ones of 0
        c = int(torch.randint(0, 3, (1,), generator=g))
        side = 200 if c == 0 else int(torch.randint(6, 30, (1,), generator=g))
        x, y = int(torch.randint(0, 1400 - side, (1,), generator=g)), int(torch.randint(0, 1000 - side, (1,), generator=g))
        objects.append((c, x, y, x + side, y + side))
    images = [paint_image((1000, 1400), objects), paint_image((1000, 1400), objects[:5])]
    plain_model, canvas_model = planted_detector(separate=True), planted_detector(separate=True)
    plain = run_pipeline(canvas_cfg([]), plain_model, images)
    packed = run_pipeline(canvas_cfg([[256, 256], [512, 512]]), canvas_model, images)
    for a, b in zip(plain, packed):
        assert a["autofocus"]["chip_boxes_per_scale"] == b["autofocus"]["chip_boxes_per_scale"]
        assert detections(a) == detections(b)
        dets_a, dets_b = a["autofocus_details"]["detections_per_scale"][1], b["autofocus_details"]["detections_per_scale"][1]
        for da, db in zip(dets_a, dets_b):  # every chip's own detections, original frame
            assert torch.equal(da.pred_boxes.tensor, db.pred_boxes.tensor)
    # Finer-scale passes ran on canvases only (scale 0 keeps its whole-image batch): fewer passes,
    # each of a configured shape.
    fine_shapes = {s[1:] for s in canvas_model.batches[1:]}
    assert fine_shapes <= {(256, 256), (512, 512)}
    chips = sum(b["autofocus"]["chips_per_scale"][1] for b in packed)
    assert chips >= 2 and len(canvas_model.batches) - 1 < chips


def test_canvas_focus_maps_equal_per_chip_maps(planted_detector, paint_image):
    # Three scales, so scale-1 chips' FocusPixel maps (sliced from canvas maps) make scale-2 chips.
    image = paint_image((1000, 1400), [(1, 300, 300, 316, 316), (2, 900, 600, 908, 608), (1, 1000, 100, 1010, 110)])
    cfg_kwargs = dict(SCALES=[[250, 350], [500, 700], [-1, -1]], VALID_RANGES=[[-1.0, -1.0]] * 3)
    plain = run_pipeline(canvas_cfg([], **cfg_kwargs), planted_detector(separate=True), [image])[0]
    packed = run_pipeline(canvas_cfg([[256, 256], [512, 512]], **cfg_kwargs), planted_detector(separate=True), [image])[0]
    maps_a = plain["autofocus_details"]["focus_maps_per_scale"][1]
    maps_b = packed["autofocus_details"]["focus_maps_per_scale"][1]
    assert len(maps_a) == len(maps_b) >= 2
    for ma, mb in zip(maps_a, maps_b):
        assert torch.equal(ma, mb)
    assert plain["autofocus"]["chip_boxes_per_scale"] == packed["autofocus"]["chip_boxes_per_scale"]
    assert detections(plain) == detections(packed) and len(detections(plain)) == 3
