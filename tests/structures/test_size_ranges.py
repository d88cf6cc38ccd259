"""Size ranges (sqrt(area), both ends inclusive, hi < 0 = no upper limit) and their check."""
import pytest
import torch

from autofocus_d2.structures import box_sizes, check_size_range, in_size_range


def test_in_size_range():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 4.0, 4.0],  # 4
            [0.0, 0.0, 8.0, 8.0],  # 8
            [0.0, 0.0, 2.0, 8.0],  # 4
            [10.0, 10.0, 26.0, 26.0],  # 16
            [0.0, 0.0, 32.0, 32.0],  # 32
            [5.0, 5.0, 5.0, 9.0],  # 0 (degenerate)
        ]
    )
    assert box_sizes(boxes).tolist() == [4.0, 8.0, 4.0, 16.0, 32.0, 0.0]
    assert in_size_range(boxes, 4.0, 16.0).tolist() == [True, True, True, True, False, False]
    assert in_size_range(boxes, 8.0, -1.0).tolist() == [False, True, False, True, True, False]
    assert in_size_range(boxes, 0.0, -1.0).tolist() == [True] * 6
    assert in_size_range(boxes, 4.5, 7.99).tolist() == [False] * 6
    keep = in_size_range(torch.zeros(0, 4), 0.0, 10.0)
    assert keep.shape == (0,) and keep.dtype == torch.bool
    with pytest.raises(ValueError, match="must not contain NaN"):
        in_size_range(boxes, float("nan"), 1.0)
    with pytest.raises(ValueError, match=r"boxes must have shape \(R, 4\)"):
        in_size_range(torch.zeros(4), 0.0, 1.0)


def test_check_size_range_names_the_value():
    assert check_size_range([40, -1]) == (40.0, -1.0)
    with pytest.raises(ValueError, match="INPUT.SNIPER.VALID_RANGES must be"):
        check_size_range([1.0, float("nan")], "INPUT.SNIPER.VALID_RANGES")
    with pytest.raises(ValueError, match="valid_range must be"):
        check_size_range([1.0])
