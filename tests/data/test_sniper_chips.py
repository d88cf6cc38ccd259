import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofocus_d2.data import chip_box_validity, negative_chips, positive_chips
from autofocus_d2.structures import in_size_range

TOL = 1e-3


def _chips(boxes, image_hw, zoom=1.0, chip_size=512, valid_range=(-1, -1), stride=32):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return positive_chips(boxes, image_hw=image_hw, zoom=zoom, chip_size=chip_size,
                          valid_range=valid_range, stride=stride)


def _holds(chips, boxes, side):
    """(N, M) bool: chip n holds box m (inside it, or covering min(w, side) * min(h, side))."""
    inside = ((boxes[None, :, :2] >= chips[:, None, :2] - TOL)
              & (boxes[None, :, 2:] <= chips[:, None, 2:] + TOL)).all(dim=2)
    wh = boxes[:, 2:] - boxes[:, :2]
    inter = (torch.minimum(chips[:, None, 2:], boxes[None, :, 2:])
             - torch.maximum(chips[:, None, :2], boxes[None, :, :2])).clamp(min=0).prod(dim=2)
    best = wh.clamp(max=side).prod(dim=1)
    covered = (wh > side).any(dim=1)[None] & (inter >= best[None] * (1 - 1e-4) - TOL)
    return inside | covered


def _holds_strict(chips, boxes, side, margin=1e-3):
    """Like _holds, per axis, but with a margin to spare (a subset of what any tolerance holds):
    along an axis a box no longer than ``side`` lies inside the chip, a longer one contains it."""
    wh = boxes[:, 2:] - boxes[:, :2]
    fits = (wh <= side)[None]
    c0, c1 = chips[:, None, :2], chips[:, None, 2:]
    b0, b1 = boxes[None, :, :2], boxes[None, :, 2:]
    inside = (c0 <= b0 - margin) & (c1 >= b1 + margin)
    contains = (c0 >= b0 + margin) & (c1 <= b1 - margin)
    return torch.where(fits, inside, contains).all(dim=2)


def _valid(boxes, image_hw, valid_range):
    """The boxes positive_chips must cover: clipped, non-empty, sqrt(area) in range (the rule
    of autofocus_d2.inference.focus_stacking.in_size_range)."""
    h, w = image_hw
    boxes = torch.minimum(boxes.double().clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float64))
    wh = boxes[:, 2:] - boxes[:, :2]
    boxes = boxes[(wh > 0).all(dim=1)]
    return boxes[in_size_range(boxes, *valid_range)]


def _grid_candidates(image_hw, zoom, chip_size, stride):
    """All plain grid chips (original frame), brute force, as SNIPER's candidate list."""
    def axis(length):
        length = length * zoom
        if length <= chip_size:
            return [0.0]
        last = length - chip_size
        return [p for p in range(0, int(last) + 1, stride) if p < last] + [last]
    h, w = image_hw
    out = [[x, y, min(x + chip_size, w * zoom), min(y + chip_size, h * zoom)]
           for y in axis(h) for x in axis(w)]
    return torch.tensor(out, dtype=torch.float64) / zoom


# ---------------------------------------------------------------------------------------------
# Property test of the positive_chips contract
# ---------------------------------------------------------------------------------------------


@st.composite
def _problems(draw):
    h = draw(st.integers(40, 1500))
    w = draw(st.integers(40, 1500))
    zoom = draw(st.sampled_from([0.25, 0.5, 1.0, 4 / 3, 2.0, 3.0]))
    chip_size = draw(st.sampled_from([64, 128, 200]))
    stride = draw(st.sampled_from([8, 16, 32]).filter(lambda s: s <= chip_size))
    m = draw(st.integers(0, 10))
    boxes = []
    for _ in range(m):
        x0 = draw(st.floats(-50, w + 10))
        y0 = draw(st.floats(-50, h + 10))
        bw = draw(st.floats(0.5, 1.3 * max(h, w)))
        bh = draw(st.floats(0.5, 1.3 * max(h, w)))
        boxes.append([x0, y0, x0 + bw, y0 + bh])
    valid_range = draw(st.sampled_from([(-1.0, -1.0), (-1.0, 60.0), (20.0, 200.0), (100.0, -1.0)]))
    return (h, w), zoom, chip_size, stride, boxes, valid_range


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_problems())
def test_positive_chips_contract(problem):
    image_hw, zoom, chip_size, stride, boxes, valid_range = problem
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    args = dict(image_hw=image_hw, zoom=zoom, chip_size=chip_size, valid_range=valid_range, stride=stride)
    chips = positive_chips(boxes, **args)
    assert chips.dtype == torch.float32 and chips.dim() == 2 and chips.shape[1] == 4
    assert torch.equal(chips, positive_chips(boxes.clone(), **args))  # deterministic

    h, w = image_hw
    side = chip_size / zoom
    assert (chips[:, :2] >= -TOL).all() and (chips[:, 2] <= w + TOL).all() and (chips[:, 3] <= h + TOL).all()
    # Full chip sides, or the whole image side where the zoomed image is shorter than a chip.
    assert torch.allclose(chips[:, 2] - chips[:, 0], torch.tensor(min(side, float(w))), atol=1e-2)
    assert torch.allclose(chips[:, 3] - chips[:, 1], torch.tensor(min(side, float(h))), atol=1e-2)

    valid = _valid(boxes, image_hw, valid_range).float()
    if valid.shape[0] == 0:
        assert chips.shape == (0, 4)
        return
    holds = _holds(chips.double(), valid.double(), side)
    assert holds.any(dim=0).all(), "a valid box is held by no chip"
    assert holds.any(dim=1).all(), "a chip holds no valid box"
    assert chips.shape[0] <= valid.shape[0]
    for j in range(valid.shape[0]):  # consistent with the mapper's per-chip rule
        assert any(bool(chip_box_validity(valid[j : j + 1], c, valid_range, side)[0]) for c in chips)
    # Greedy: the first chip holds at least as many valid boxes as any plain grid candidate.
    grid = _grid_candidates(image_hw, zoom, chip_size, stride)
    assert int(holds[0].sum()) >= int(_holds_strict(grid, valid.double(), side).sum(dim=1).max())


# ---------------------------------------------------------------------------------------------
# Hand-made cases, exact values
# ---------------------------------------------------------------------------------------------


def test_box_at_the_image_corner_gets_the_flush_chip():
    chips = _chips([[980, 580, 1000, 600]], (600, 1000))
    assert torch.equal(chips, torch.tensor([[488.0, 88.0, 1000.0, 600.0]]))


def test_greedy_order_and_row_major_ties():
    boxes = [[10, 10, 20, 20], [400, 400, 420, 420], [600, 600, 620, 620], [900, 900, 950, 950]]
    chips = _chips(boxes, (1000, 1000))
    # (0, 0) and (128, 128) both hold two boxes: the first in row-major order wins; then the
    # first grid position holding the last two boxes.
    assert torch.equal(chips, torch.tensor([[0.0, 0, 512, 512], [448, 448, 960, 960]]))


def test_valid_range_selects_the_boxes():
    boxes = [[10, 10, 20, 20], [600, 600, 700, 700]]  # sizes 10 and 100
    assert torch.equal(_chips(boxes, (1000, 1000), valid_range=(50, -1)),
                       torch.tensor([[192.0, 192, 704, 704]]))
    assert torch.equal(_chips(boxes, (1000, 1000), valid_range=(-1, 50)),
                       torch.tensor([[0.0, 0, 512, 512]]))
    # Inclusive limits.
    assert _chips(boxes, (1000, 1000), valid_range=(10, 10)).shape == (1, 4)


def test_zoom_converts_between_frames():
    # zoom 0.5: 512-px chips of the scale are 1024 original px; the box needs the flush position.
    chips = _chips([[2900, 100, 2950, 150]], (2000, 3000), zoom=0.5)
    assert torch.equal(chips, torch.tensor([[1976.0, 0.0, 3000.0, 1024.0]]))


def test_box_larger_than_a_chip():
    box = torch.tensor([[100.0, 200.0, 1100.0, 300.0]])
    chips = positive_chips(box, image_hw=(1000, 2000), zoom=1.0, valid_range=(-1, -1))
    assert torch.equal(chips, torch.tensor([[128.0, 0.0, 640.0, 512.0]]))
    assert bool(chip_box_validity(box, chips[0], (-1, -1), 512.0)[0])


def test_positions_added_where_the_grid_misses_a_box():
    # 520 px wide: the chip must lie in x0 in [10, 18], between the grid positions 0 and 32.
    chips = _chips([[10, 0, 530, 50]], (100, 2000))
    assert torch.equal(chips, torch.tensor([[14.0, 0.0, 526.0, 100.0]]))
    # 500 px high: fits only for y0 in [8, 20].
    chips = _chips([[0, 20, 100, 520]], (2000, 2000))
    assert torch.equal(chips, torch.tensor([[0.0, 14.0, 512.0, 526.0]]))


def test_no_valid_box():
    assert _chips([], (500, 500)).shape == (0, 4)
    assert _chips([[10, 10, 20, 20]], (500, 500), valid_range=(50, -1)).shape == (0, 4)
    assert _chips([[600, 600, 700, 700]], (500, 500)).shape == (0, 4)  # outside the image
    assert _chips([[10, 10, 10, 20]], (500, 500)).shape == (0, 4)  # empty


def test_image_smaller_than_a_chip():
    assert torch.equal(_chips([[5, 5, 30, 30]], (100, 120), zoom=2.0),
                       torch.tensor([[0.0, 0.0, 120.0, 100.0]]))
    # Shorter than a chip along y only: the chip spans the height.
    assert torch.equal(_chips([[700, 5, 730, 30]], (100, 1000)),
                       torch.tensor([[224.0, 0.0, 736.0, 100.0]]))


def test_boxes_are_clipped_to_the_image():
    chips = _chips([[-30, -30, 20, 20]], (1000, 1000))
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 512.0, 512.0]]))


def test_huge_image_at_zoom_3_is_cheap():
    boxes = torch.tensor([[100.0, 100, 140, 130], [7900, 7950, 7990, 7999], [4000, 10, 4020, 30],
                          [4005, 12, 4030, 40], [2000, 5000, 2600, 5200]])
    start = time.perf_counter()
    chips = positive_chips(boxes, image_hw=(8000, 8000), zoom=3.0, valid_range=(-1, -1))
    assert time.perf_counter() - start < 2.0
    side = 512 / 3
    assert chips.shape == (4, 4)  # the two boxes near (4000, 10) share a chip
    assert _holds(chips.double(), boxes.double(), side).any(dim=0).all()
    assert torch.allclose(chips[:, 2:] - chips[:, :2], torch.full((4, 2), side), atol=1e-2)


def test_bad_inputs_raise():
    box = torch.tensor([[0.0, 0, 10, 10]])
    with pytest.raises(ValueError, match="shape"):
        positive_chips(torch.zeros(3, 5), image_hw=(100, 100), zoom=1.0, valid_range=(-1, -1))
    with pytest.raises(ValueError, match="zoom"):
        positive_chips(box, image_hw=(100, 100), zoom=0.0, valid_range=(-1, -1))
    with pytest.raises(ValueError, match="chip_size"):
        positive_chips(box, image_hw=(100, 100), zoom=1.0, chip_size=0, valid_range=(-1, -1))
    with pytest.raises(ValueError, match="stride"):
        positive_chips(box, image_hw=(100, 100), zoom=1.0, chip_size=64, stride=65, valid_range=(-1, -1))
    with pytest.raises(ValueError, match="image_hw"):
        positive_chips(box, image_hw=(0, 100), zoom=1.0, valid_range=(-1, -1))
    with pytest.raises(ValueError, match="NaN"):
        positive_chips(torch.tensor([[0.0, 0, float("nan"), 1]]), image_hw=(9, 9), zoom=1.0,
                       valid_range=(-1, -1))
    with pytest.raises(ValueError, match="valid_range"):
        positive_chips(box, image_hw=(100, 100), zoom=1.0, valid_range=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# negative_chips
# ---------------------------------------------------------------------------------------------


def _planted_proposals():
    inside_positive = [[50 + 10 * i, 60, 90 + 10 * i, 100] for i in range(12)]
    cluster = [[700 + i, 700 + i, 740 + i, 740 + i] for i in range(12)]
    isolated = [[100, 900, 130, 930], [110, 905, 140, 935], [120, 910, 150, 940]]
    return torch.tensor(inside_positive + cluster + isolated, dtype=torch.float32)


def test_negative_chips_on_planted_proposals():
    positive = torch.tensor([[0.0, 0.0, 512.0, 512.0]])
    args = dict(image_hw=(1000, 1000), zoom=1.0, positive_chips=positive)
    chips = negative_chips(_planted_proposals(), min_proposals=10, **args)
    assert torch.equal(chips, torch.tensor([[256.0, 256.0, 768.0, 768.0]]))
    chips = negative_chips(_planted_proposals(), min_proposals=3, **args)
    assert torch.equal(chips, torch.tensor([[256.0, 256, 768, 768], [0, 448, 512, 960]]))
    # The 12 proposals inside the positive chip never make a negative chip.
    only_inside = _planted_proposals()[:12]
    assert negative_chips(only_inside, min_proposals=1, **args).shape == (0, 4)
    # Out of the valid range, the cluster (size 40) is not counted.
    assert negative_chips(_planted_proposals(), min_proposals=3, valid_range=(50, -1), **args).shape == (0, 4)
    assert negative_chips(torch.zeros(0, 4), min_proposals=1, **args).shape == (0, 4)


def test_negative_chips_count_every_held_proposal():
    # A proposal cut by the positive chip is not inside it: it counts.
    proposals = torch.tensor([[500.0, 100, 540, 140]] + [[600, 100, 640, 140]] * 2)
    positive = torch.tensor([[0.0, 0.0, 512.0, 512.0]])
    chips = negative_chips(proposals, image_hw=(1000, 1000), zoom=1.0, positive_chips=positive,
                           min_proposals=3)
    assert torch.equal(chips, torch.tensor([[128.0, 0.0, 640.0, 512.0]]))
    with pytest.raises(ValueError, match="min_proposals"):
        negative_chips(proposals, image_hw=(1000, 1000), zoom=1.0, positive_chips=positive, min_proposals=0)


# ---------------------------------------------------------------------------------------------
# chip_box_validity
# ---------------------------------------------------------------------------------------------


def test_chip_box_validity_cases():
    chip = torch.tensor([100.0, 100.0, 356.0, 356.0])
    boxes = torch.tensor([
        [110, 110, 150, 150],  # inside
        [99.5, 120, 140, 160],  # inside within the 1 px tolerance
        [90, 120, 140, 160],  # cut by the chip
        [102, 102, 104, 104],  # size 2: below the range
        [400, 400, 450, 450],  # outside the chip
    ])
    assert chip_box_validity(boxes, chip, (10, 200), 256.0).tolist() == [True, True, False, False, False]
    large = torch.tensor([
        [50, 120, 450, 300],  # wider than the chip, covered over 256 x 180: the most possible
        [101.2, 120, 500, 300],  # covered over 254.8 x 180: 99.5% of the most possible
        [150, 120, 550, 300],  # covered over 206 x 180: 80%
        [50, 50, 450, 450],  # larger in both directions, covered over 256 x 256
    ])
    assert chip_box_validity(large, chip, (10, -1), 256.0).tolist() == [True, True, False, True]
    assert chip_box_validity(large, chip, (10, 200), 256.0).tolist() == [False] * 4  # sizes > 200
    assert chip_box_validity(torch.zeros(0, 4), chip, (-1, -1), 256.0).shape == (0,)
    with pytest.raises(ValueError, match="chip"):
        chip_box_validity(boxes, chip[:3], (-1, -1), 256.0)
    with pytest.raises(ValueError, match="chip_side"):
        chip_box_validity(boxes, chip, (-1, -1), 0.0)
