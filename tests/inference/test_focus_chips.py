"""generate_focus_chips and merge_overlapping_boxes on hand-made cases, exact to the pixel: focus
cells and the threshold, 8-connectivity, dilation, the minimum chip size at the image borders,
padding cells, merging of enlarged chips, the output order; the argument checks, and CUDA against
the CPU.

Their property tests (hypothesis) are in test_focus_chips_properties.py.
"""
import pytest
import torch

from autofocus_d2.inference import (
    generate_focus_chips,
    merge_overlapping_boxes,
)


def _chips(prob, stride=4, threshold=0.5, dilation=1, min_size=0.0, image_hw=None):
    if image_hw is None:
        image_hw = (prob.shape[0] * stride, prob.shape[1] * stride)
    return generate_focus_chips(
        prob,
        stride=stride,
        threshold=threshold,
        dilation=dilation,
        min_size=min_size,
        image_hw=image_hw,
    )


def _map(h, w, cells, value=1.0):
    prob = torch.zeros(h, w)
    for i, j in cells:
        prob[i, j] = value
    return prob


# ---------------------------------------------------------------------------------------------
# Exact hand-made cases
# ---------------------------------------------------------------------------------------------


def test_single_cell_exact_box():
    chips = _chips(_map(6, 8, [(1, 2)]), stride=4)
    assert chips.dtype == torch.float32
    assert torch.equal(chips, torch.tensor([[8.0, 4.0, 12.0, 8.0]]))


def test_threshold_is_inclusive():
    prob = torch.zeros(4, 4)
    prob[0, 0] = 0.5  # == threshold: a focus cell
    prob[3, 3] = 0.4999  # just below: not a focus cell
    chips = _chips(prob, stride=8, threshold=0.5)
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    assert _chips(prob, stride=8, threshold=0.50001).shape == (0, 4)


def test_threshold_outside_unit_interval():
    prob = torch.rand(5, 5, generator=torch.Generator().manual_seed(0))
    assert _chips(prob, threshold=1.5).shape == (0, 4)
    everything = _chips(prob, stride=4, threshold=-1.0, image_hw=(18, 19))
    assert torch.equal(everything, torch.tensor([[0.0, 0.0, 19.0, 18.0]]))


def test_no_focus_cell_gives_no_chip():
    chips = _chips(torch.full((7, 9), 0.2), threshold=0.5, dilation=5, min_size=100)
    assert chips.shape == (0, 4) and chips.dtype == torch.float32


def test_diagonal_cells_are_one_component():
    # 8-connectivity: diagonal neighbours form a single component.
    chips = _chips(_map(5, 5, [(1, 1), (2, 2), (3, 1)]), stride=4)
    assert torch.equal(chips, torch.tensor([[4.0, 4.0, 12.0, 16.0]]))


def test_separated_cells_give_separate_chips():
    # Cells (0, 0) and (0, 2) are not neighbours: two chips.
    chips = _chips(_map(3, 4, [(0, 0), (0, 2)]), stride=4)
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 4.0, 4.0], [8.0, 0.0, 12.0, 4.0]]))


def test_touching_chips_are_not_merged():
    # [0, 0, 4, 4] grows to [0, 0, 8, 8]; [12, 0, 16, 4] grows around x-centre 14 to [10, 18],
    # shifted to [8, 16]. The chips share the edge x = 8: only positive-area overlaps merge.
    chips = _chips(_map(3, 4, [(0, 0), (0, 3)]), stride=4, min_size=8)
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]]))


def test_dilation_odd_and_even():
    prob = _map(7, 7, [(3, 3)])
    assert torch.equal(_chips(prob, stride=4, dilation=3), torch.tensor([[8.0, 8.0, 20.0, 20.0]]))
    assert torch.equal(_chips(prob, stride=4, dilation=5), torch.tensor([[4.0, 4.0, 24.0, 24.0]]))
    # even size 2: window [p, p + 1], so the focus cell spreads to the previous row/col.
    assert torch.equal(_chips(prob, stride=4, dilation=2), torch.tensor([[8.0, 8.0, 16.0, 16.0]]))


def test_dilation_joins_components():
    prob = _map(3, 8, [(1, 1), (1, 3)])
    assert _chips(prob, stride=4, dilation=1).shape == (2, 4)
    assert torch.equal(_chips(prob, stride=4, dilation=3), torch.tensor([[0.0, 0.0, 20.0, 12.0]]))


def test_min_size_centred():
    chips = _chips(_map(10, 10, [(5, 5)]), stride=4, min_size=10)
    # [20, 20, 24, 24], centre 22 -> [17, 27]
    assert torch.equal(chips, torch.tensor([[17.0, 17.0, 27.0, 27.0]]))


def test_min_size_fractional():
    chips = _chips(_map(10, 10, [(5, 5)]), stride=4, min_size=7.5)
    assert torch.equal(chips, torch.tensor([[18.25, 18.25, 25.75, 25.75]]))


def test_min_size_shifted_inside_image_not_cut():
    # top-left corner: [0, 0, 4, 4] would grow to [-3, 7]; shifted to [0, 10].
    chips = _chips(_map(10, 10, [(0, 0)]), stride=4, min_size=10, image_hw=(38, 38))
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    # bottom-right corner: cell (9, 9) is [36, 40) clipped to [36, 38]; centre 37 -> [32, 42],
    # shifted to [28, 38].
    chips = _chips(_map(10, 10, [(9, 9)]), stride=4, min_size=10, image_hw=(38, 38))
    assert torch.equal(chips, torch.tensor([[28.0, 28.0, 38.0, 38.0]]))


def test_min_size_larger_than_image_side():
    # Height 6 < min_size 10: the chip spans the full height; width grows normally.
    chips = _chips(_map(2, 10, [(0, 4)]), stride=4, min_size=10, image_hw=(6, 40))
    assert torch.equal(chips, torch.tensor([[13.0, 0.0, 23.0, 6.0]]))
    chips = _chips(_map(2, 2, [(0, 0)]), stride=4, min_size=100, image_hw=(5, 7))
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 7.0, 5.0]]))


def test_enlarged_chips_are_merged():
    # [0, 0, 4, 4] -> [0, 0, 10, 10]; [12, 0, 16, 4] -> [9, 0, 19, 10]; they overlap -> merged.
    chips = _chips(_map(10, 10, [(0, 0), (0, 3)]), stride=4, min_size=10)
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 19.0, 10.0]]))


def test_overlap_chain_is_merged():
    # [0, 0, 10, 10] overlaps [9, 0, 19, 10], which overlaps [17, 5, 27, 15]: one chip.
    prob = _map(10, 12, [(0, 0), (0, 3), (2, 5)])
    chips = _chips(prob, stride=4, min_size=10)
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 27.0, 15.0]]))


def test_padding_cells_are_ignored():
    # image (10, 10) at stride 4: rows/cols 0..2 are valid (cell 2 starts at 8 < 10).
    prob = _map(8, 8, [(3, 3), (5, 0), (0, 6)])
    assert _chips(prob, stride=4, dilation=3, image_hw=(10, 10)).shape == (0, 4)
    prob = _map(8, 8, [(2, 2), (3, 3)])
    # The valid focus cell (2, 2) covers [8, 12) clipped to [8, 10]; dilation must not let the
    # padding cell (3, 3) pull the chip outside the image.
    chips = _chips(prob, stride=4, dilation=1, image_hw=(10, 10))
    assert torch.equal(chips, torch.tensor([[8.0, 8.0, 10.0, 10.0]]))
    chips = _chips(prob, stride=4, dilation=3, image_hw=(10, 10))
    assert torch.equal(chips, torch.tensor([[4.0, 4.0, 10.0, 10.0]]))


def test_output_sorted_by_y_then_x():
    prob = _map(9, 9, [(6, 0), (0, 6), (0, 0), (6, 6), (3, 3)])
    chips = _chips(prob, stride=2)
    expected = torch.tensor(
        [
            [0.0, 0.0, 2.0, 2.0],
            [12.0, 0.0, 14.0, 2.0],
            [6.0, 6.0, 8.0, 8.0],
            [0.0, 12.0, 2.0, 14.0],
            [12.0, 12.0, 14.0, 14.0],
        ]
    )
    assert torch.equal(chips, expected)


def test_serpentine_component_250():
    # One 8-connected path through a 250 x 250 map, the worst case of label propagation.
    n = 250
    prob = torch.zeros(n, n)
    prob[::2, :] = 1.0
    for r in range(1, n, 2):
        prob[r, n - 1 if (r // 2) % 2 == 0 else 0] = 1.0
    chips = _chips(prob, stride=16)
    assert torch.equal(chips, torch.tensor([[0.0, 0.0, 4000.0, 4000.0]]))
    # Without the connecting cells every row is its own component (rows 2 apart don't touch).
    prob[1::2] = 0.0
    assert _chips(prob, stride=16).shape == (n // 2, 4)


def test_deterministic():
    prob = torch.rand(40, 33, generator=torch.Generator().manual_seed(3))
    kwargs = dict(stride=8, threshold=0.8, dilation=3, min_size=30, image_hw=(310, 260))
    first = generate_focus_chips(prob, **kwargs)
    for _ in range(3):
        assert torch.equal(generate_focus_chips(prob.clone(), **kwargs), first)


def test_non_contiguous_map():
    prob = torch.rand(20, 30, generator=torch.Generator().manual_seed(1))
    kwargs = dict(stride=4, threshold=0.9, dilation=1, min_size=0, image_hw=(120, 80))
    expected = generate_focus_chips(prob.t().contiguous(), **kwargs)
    assert torch.equal(generate_focus_chips(prob.t(), **kwargs), expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(focus_prob=torch.zeros(4)), "focus_prob must be 2-D"),
        (dict(focus_prob=torch.zeros(1, 4, 4)), "focus_prob must be 2-D"),
        (dict(focus_prob=torch.tensor([[0.1, float("nan")]])), "focus map contains NaN"),
        (dict(focus_prob=torch.tensor([[0.1, float("inf")]])), "focus map contains NaN or inf"),
        (dict(stride=0), "stride must be a positive integer, got 0"),
        (dict(stride=-4), "stride must be a positive integer, got -4"),
        (dict(dilation=0), "dilation must be an integer >= 1, got 0"),
        (dict(min_size=-1.0), r"min_size must be finite and >= 0, got -1.0"),
        (dict(min_size=float("nan")), "min_size must be finite and >= 0, got nan"),
        (dict(threshold=float("nan")), "threshold must not be NaN"),
        (dict(image_hw=(0, 8)), r"image_hw must be two positive integers \(H, W\), got \(0, 8\)"),
        (dict(image_hw=(8, -1)), r"image_hw .* got \(8, -1\)"),
        (dict(image_hw=(17, 8)), r"does not cover image_hw \(17, 8\): at least \(5, 2\) cells"),
    ],
)
def test_invalid_arguments(kwargs, match):
    args = dict(
        focus_prob=torch.zeros(4, 4),
        stride=4,
        threshold=0.5,
        dilation=1,
        min_size=0.0,
        image_hw=(16, 16),
    )
    args.update(kwargs)
    focus_prob = args.pop("focus_prob")
    with pytest.raises(ValueError, match=match):
        generate_focus_chips(focus_prob, **args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    prob = torch.rand(60, 70, generator=torch.Generator().manual_seed(5))
    kwargs = dict(stride=8, threshold=0.9, dilation=3, min_size=40, image_hw=(470, 555))
    cpu = generate_focus_chips(prob, **kwargs)
    gpu = generate_focus_chips(prob.cuda(), **kwargs)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]])
    assert torch.equal(merge_overlapping_boxes(boxes.cuda()).cpu(), merge_overlapping_boxes(boxes))


# ---------------------------------------------------------------------------------------------
# merge_overlapping_boxes
# ---------------------------------------------------------------------------------------------


def test_merge_overlapping_boxes_exact():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [10.0, 0.0, 20.0, 10.0],  # shares an edge with the first: not merged
            [20.0, 10.0, 30.0, 20.0],  # shares a corner with the second: not merged
            [50.0, 50.0, 60.0, 60.0],
            [59.0, 59.0, 70.0, 65.0],  # overlaps the fourth
        ]
    )
    expected = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [10.0, 0.0, 20.0, 10.0],
            [20.0, 10.0, 30.0, 20.0],
            [50.0, 50.0, 70.0, 65.0],
        ]
    )
    assert torch.equal(merge_overlapping_boxes(boxes), expected)


def test_merge_overlapping_boxes_cascade_and_chain():
    # A overlaps B; box(A, B) overlaps C although neither A nor B does. D-E-F form a chain.
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 2.0],
            [8.0, 0.0, 10.0, 10.0],
            [1.0, 5.0, 3.0, 7.0],
            [100.0, 0.0, 110.0, 10.0],
            [109.0, 0.0, 120.0, 10.0],
            [119.0, 0.0, 130.0, 10.0],
        ],
        dtype=torch.float64,
    )
    out = merge_overlapping_boxes(boxes)
    assert out.dtype == torch.float64
    assert torch.equal(
        out, torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 0.0, 130.0, 10.0]], dtype=torch.float64)
    )


def test_merge_overlapping_boxes_empty_and_single():
    assert merge_overlapping_boxes(torch.zeros(0, 4)).shape == (0, 4)
    one = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(merge_overlapping_boxes(one), one)
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\), got \(3,\)"):
        merge_overlapping_boxes(torch.zeros(3))
