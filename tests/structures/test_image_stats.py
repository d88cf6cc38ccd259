"""ImageStats: the per-image ``autofocus`` record and its plain dict form."""
import json

import pytest

from autofocus_d2.structures import ImageStats


def test_dict_form_keeps_the_keys_and_their_order():
    full = {
        "pixels_per_scale": [100, 50],
        "chips_per_scale": [1, 2],
        "chip_boxes_per_scale": [[[0, 0, 10, 10]], [[0, 0, 5, 5], [5, 5, 10, 10]]],
        "pyramid_pixels_per_scale": [100, 400],
        "skipped_scales": [],
    }
    stats = ImageStats.from_dict(full)
    assert stats.chips_per_scale == [1, 2] and stats.skipped_scales == []
    assert json.dumps(stats.to_dict()) == json.dumps(full)
    # A baseline (SAHI, TTA) reports no chip boxes and no skipped scales: they are left out.
    short = {"pixels_per_scale": [7], "chips_per_scale": [1], "pyramid_pixels_per_scale": [9]}
    assert json.dumps(ImageStats(pixels_per_scale=[7], chips_per_scale=[1], pyramid_pixels_per_scale=[9]).to_dict()) \
        == json.dumps(short)
    assert ImageStats.from_dict(short).chip_boxes_per_scale is None


def test_from_dict_names_missing_and_unknown_keys():
    with pytest.raises(ValueError, match=r"missing keys \['pyramid_pixels_per_scale'\]"):
        ImageStats.from_dict({"pixels_per_scale": [1], "chips_per_scale": [1]})
    with pytest.raises(ValueError, match=r"unknown keys \['pixels'\]"):
        ImageStats.from_dict({"pixels_per_scale": [1], "chips_per_scale": [1], "pyramid_pixels_per_scale": [1],
                              "pixels": 3})
