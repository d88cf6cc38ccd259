"""plan_view_batches: every view once, batches within the padding budget."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autofocus_d2.inference.view_batching import padded_hw, plan_view_batches


def batch_cost(hws, batch, d=32):
    ph = [padded_hw(hws[i], d) for i in batch]
    return max(h for h, _ in ph) * max(w for _, w in ph) * len(batch), sum(h * w for h, w in ph)


def test_wide_and_tall_chips_do_not_share_a_batch():
    hws = [(64, 512), (512, 64), (64, 500), (500, 60)]
    batches = plan_view_batches(hws, max_batch_size=8, size_divisibility=32, max_padding=0.1)
    assert sorted(sorted(b) for b in batches) == [[0, 2], [1, 3]]
    # Plain batching (no padding limit) puts all four in one 512x512 batch: 4 * 512 * 512 pixels
    # computed for 4 * 64 * 512 of chips.
    assert plan_view_batches(hws, max_batch_size=8, size_divisibility=32, max_padding=math.inf) == [[0, 1, 2, 3]]


def test_equal_shapes_fill_batches_up_to_the_maximum():
    hws = [(100, 100)] * 7
    assert plan_view_batches(hws, max_batch_size=3, size_divisibility=32, max_padding=0.0) == [
        [0, 1, 2], [3, 4, 5], [6]]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="max_batch_size"):
        plan_view_batches([(10, 10)], max_batch_size=0, size_divisibility=32, max_padding=0.1)
    with pytest.raises(ValueError, match="max_padding"):
        plan_view_batches([(10, 10)], max_batch_size=2, size_divisibility=32, max_padding=-1)
    with pytest.raises(ValueError, match="empty size"):
        plan_view_batches([(0, 10)], max_batch_size=2, size_divisibility=32, max_padding=0.1)


@settings(max_examples=200, deadline=None)
@given(
    hws=st.lists(st.tuples(st.integers(1, 700), st.integers(1, 700)), min_size=0, max_size=25),
    max_batch_size=st.integers(1, 9),
    max_padding=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
)
def test_every_view_once_within_budget(hws, max_batch_size, max_padding):
    batches = plan_view_batches(hws, max_batch_size=max_batch_size, size_divisibility=32,
                                max_padding=max_padding)
    assert sorted(i for b in batches for i in b) == list(range(len(hws)))
    for b in batches:
        assert 1 <= len(b) <= max_batch_size
        area, own = batch_cost(hws, b)
        assert area <= (1 + max_padding) * own + 1e-6
    assert batches == plan_view_batches(hws, max_batch_size=max_batch_size, size_divisibility=32,
                                        max_padding=max_padding)


@settings(max_examples=200, deadline=None)
@given(
    hws=st.lists(st.tuples(st.integers(1, 2048), st.integers(1, 2048)), min_size=0, max_size=25),
    max_batch_size=st.integers(1, 9),
    max_pixels=st.sampled_from([0, 300_000, 1_000_000, 4_194_304, 8_000_000]),
)
def test_no_batch_exceeds_the_pixel_budget_unless_a_single_view_does(hws, max_batch_size, max_pixels):
    batches = plan_view_batches(hws, max_batch_size=max_batch_size, size_divisibility=32,
                                max_padding=math.inf, max_pixels=max_pixels)
    assert sorted(i for b in batches for i in b) == list(range(len(hws)))
    for b in batches:
        area, _ = batch_cost(hws, b)
        assert 1 <= len(b) <= max_batch_size
        if max_pixels and len(b) > 1:
            assert area <= max_pixels
    if not max_pixels:  # no budget: the plain batching of before
        assert batches == plan_view_batches(hws, max_batch_size=max_batch_size, size_divisibility=32,
                                            max_padding=math.inf)


def test_pixel_budget_on_the_tiles_of_a_large_frame():
    # Thirty 2048 x 2048 tiles (a 12000 x 9000 frame at zoom 1): 8 per batch without a budget,
    # one per batch under 8 Mpix (two would be 8.4 Mpix), three under 12.6 Mpix.
    tiles = [(2048, 2048)] * 30
    plan = lambda px: plan_view_batches(tiles, max_batch_size=8, size_divisibility=32, max_padding=0.1,  # noqa: E731
                                        max_pixels=px)
    assert [len(b) for b in plan(0)] == [8, 8, 8, 6]
    assert [len(b) for b in plan(8_000_000)] == [1] * 30
    assert [len(b) for b in plan(3 * 2048 * 2048)] == [3] * 10
    with pytest.raises(ValueError, match="max_pixels"):
        plan_view_batches(tiles, max_batch_size=8, size_divisibility=32, max_padding=0.1, max_pixels=-1)
