"""The per-method time split: detector passes attributed to scales, overhead = the rest, and the
figures add up on the real pipeline around a planted stand-in detector."""
import os

import pytest
import torch
from detectron2.config import get_cfg

from autofocus_d2 import add_autofocus_config
from autofocus_d2.benchmark.runner import measure_method, pipeline_method
from autofocus_d2.benchmark.timing import (
    DetectorPass,
    TimedFocusDetector,
    attribute_passes,
    summarize_time_split,
)
from autofocus_d2.inference import FocusDetector

HERE = os.path.dirname(os.path.abspath(__file__))


def test_passes_are_attributed_to_scales_by_their_pixels_in_order():
    # Scale 0: one whole image of 600 px; scale 1: three chips (two batches); scale 2: nothing.
    assert attribute_passes([600, 200, 100], [600, 300, 0]) == [0, 1, 1]
    assert attribute_passes([600], [600, 0]) == [0]
    assert attribute_passes([400, 200, 300], [600, 300]) == [0, 0, 1]
    with pytest.raises(ValueError, match="do not add up"):
        attribute_passes([500, 200], [600, 100])  # a pass straddles scales 0 and 1
    with pytest.raises(ValueError, match="fall short"):
        attribute_passes([600], [600, 300])


def test_time_split_of_hand_made_passes():
    times = [1.0, 3.0, 2.0]
    passes = [
        [DetectorPass(0, 1_000_000, 0.5), DetectorPass(1, 500_000, 0.25)],
        [DetectorPass(0, 1_000_000, 0.5), DetectorPass(1, 2_000_000, 2.0)],
        [DetectorPass(0, 1_000_000, 0.5)],
    ]
    split = summarize_time_split(times, passes)
    # Detector per image 0.75, 2.5, 0.5 s; overhead 0.25, 0.5, 1.5 s.
    assert split["median_detector_ms"] == pytest.approx(750.0)
    assert split["median_overhead_ms"] == pytest.approx(500.0)
    assert split["mean_time_ms"] == pytest.approx(2000.0)
    assert split["mean_detector_ms"] == pytest.approx(3750.0 / 3)
    assert split["mean_overhead_ms"] == pytest.approx(2250.0 / 3)
    assert split["overhead_share"] == pytest.approx(2.25 / 6.0)
    assert split["scale0_ms_per_mpix"] == pytest.approx(1500.0 / 3.0)  # 1.5 s over 3 Mpix
    assert split["finer_ms_per_mpix"] == pytest.approx(2250.0 / 2.5)  # 2.25 s over 2.5 Mpix
    assert summarize_time_split([1.0], [[]])["scale0_ms_per_mpix"] is None
    with pytest.raises(ValueError, match="needs its scale"):
        summarize_time_split([1.0], [[DetectorPass(-1, 10, 0.1)]])
    with pytest.raises(ValueError, match="image times"):
        summarize_time_split([1.0, 2.0], [[]])


def _pipeline_cfg():
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    # On the 800 x 1200 test image: zooms 0.5 and 1 (original resolution).
    af.SCALES = [[400, 600], [-1, -1]]
    af.FOCUS_THRESHOLD = [0.5]
    af.DILATION = [1]
    af.MIN_CHIP_SIZE = [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * 2
    af.MAX_CHIP_SIDE = 4096
    af.CHIP_BATCH_SIZE = 1  # one pass per chip: several finer passes to attribute
    return cfg


def test_the_time_split_adds_up_on_the_pipeline_with_a_planted_detector(planted_detector, paint_image):
    model = planted_detector(focus_channels=(1, 2))
    assert isinstance(TimedFocusDetector(model), FocusDetector)
    # Objects of channels 1 and 2 are FocusPixels: two separate chips at scale 1.
    images = [
        paint_image((800, 1200), [(0, 100, 100, 140, 140), (1, 600, 200, 616, 216), (2, 900, 600, 908, 608)]),
        paint_image((800, 1200), [(1, 50, 50, 60, 60)]),
    ]
    inputs = [{"image": img, "image_id": i, "height": 800, "width": 1200} for i, img in enumerate(images)]
    predict = pipeline_method(model, _pipeline_cfg(), "autofocus")

    out = predict(inputs[0])
    passes = out["detector_passes"]
    stats = out["autofocus"]
    assert stats["pixels_per_scale"][0] == 400 * 600
    assert [p.scale for p in passes] == [0] + [1] * stats["chips_per_scale"][1]
    assert stats["chips_per_scale"][1] == 2
    for k in range(2):
        assert sum(p.pixels for p in passes if p.scale == k) == stats["pixels_per_scale"][k]
    assert len(model.batches) == len(passes)  # every detect call was recorded once

    row = measure_method("autofocus", predict, inputs, dataset_name=None, device=torch.device("cpu"),
                         warmup=0, progress=False, evaluate=False)
    assert row["mean_detector_ms"] + row["mean_overhead_ms"] == pytest.approx(row["mean_time_ms"], abs=1e-6)
    assert 0 < row["mean_detector_ms"] <= row["mean_time_ms"]
    assert 0 < row["median_detector_ms"] <= row["median_time_s"] * 1000  # per image detector <= total
    assert row["scale0_ms_per_mpix"] > 0 and row["finer_ms_per_mpix"] > 0
    assert row["evaluated"] == [] and row["AP"] != row["AP"]  # NaN: not evaluated
    assert row["pixels_per_scale"][0] == 400 * 600


def test_the_single_policy_has_no_finer_passes(planted_detector, paint_image):
    model = planted_detector()
    predict = pipeline_method(model, _pipeline_cfg(), "single")
    x = {"image": paint_image((800, 1200), [(1, 600, 200, 616, 216)]), "image_id": 0}
    row = measure_method("single", predict, [x], dataset_name=None, device=torch.device("cpu"),
                         warmup=0, progress=False, evaluate=False)
    assert row["finer_ms_per_mpix"] is None and row["scale0_ms_per_mpix"] > 0
    with pytest.raises(ValueError, match="dataset_name"):
        measure_method("single", predict, [x], dataset_name=None, device=torch.device("cpu"), warmup=0,
                       progress=False)


class FakeClock:
    """time.perf_counter stand-in: advanced by the fake methods, so their times are exact."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _fake_method(name, clock, calls, seconds):
    """A predict function that takes ``seconds[repeat][image_id]`` on ``clock`` and records
    (name, image_id) in ``calls``; its repeat is counted from its own calls."""
    seen = {}

    def predict(x):
        i = x["image_id"]
        repeat = seen.get(i, 0)
        seen[i] = repeat + 1
        calls.append((name, i))
        clock.now += seconds(repeat, i)
        return {"instances": None, "detector_passes": [DetectorPass(0, 1_000_000, 0.5 * seconds(repeat, i))],
                "autofocus": {"pixels_per_scale": [1_000_000], "chips_per_scale": [1],
                              "pyramid_pixels_per_scale": [2_000_000]}}

    return predict


def test_methods_are_interleaved_per_image_in_rotating_order_and_repeated(monkeypatch):
    from autofocus_d2.benchmark import runner

    clock, calls = FakeClock(), []
    monkeypatch.setattr(runner.time, "perf_counter", clock)
    methods = [
        ("a", _fake_method("a", clock, calls, lambda r, i: 1.0 + r)),  # 1, 2, 3 s per image by repeat
        ("b", _fake_method("b", clock, calls, lambda r, i: 0.5 * (i + 1))),  # 0.5, 1, 1.5 s by image
        ("sweep", _fake_method("sweep", clock, calls, lambda r, i: 0.25)),
    ]
    inputs = [{"image_id": i} for i in range(3)]
    rows, results = runner.measure_methods(methods, inputs, dataset_name=None, device=torch.device("cpu"),
                                           warmup=0, repeats=3, repeats_of={"sweep": 1}, progress=False,
                                           evaluate=False)
    assert results == {}
    # Repeat 0: image i starts at method i (a b sweep | b sweep a | sweep a b); later repeats: the
    # two methods left, the start shifted by the repeat too.
    expected = []
    for r in range(3):
        active = ["a", "b", "sweep"] if r == 0 else ["a", "b"]
        for i in range(3):
            shift = (i + r) % len(active)
            expected += [(name, i) for name in active[shift:] + active[:shift]]
    assert calls == expected
    a, b, sweep = rows
    assert a["repeat_median_time_s"] == pytest.approx([1.0, 2.0, 3.0]) and a["median_time_s"] == pytest.approx(2.0)
    assert b["repeat_median_time_s"] == pytest.approx([1.0, 1.0, 1.0]) and b["repeats"] == 3
    assert sweep["repeats"] == 1 and sweep["repeat_median_time_s"] == pytest.approx([0.25])
    assert a["median_detector_ms"] == pytest.approx(1000.0) and a["scale0_ms_per_mpix"] == pytest.approx(1000.0)
    assert a["repeat_scale0_ms_per_mpix"] == pytest.approx([500.0, 1000.0, 1500.0])
    assert a["images"] == 3 and a["pixels_per_image"] == 1_000_000  # per-image stats from the first pass
    with pytest.raises(ValueError, match="unique"):
        runner.measure_methods([methods[0], methods[0]], inputs, dataset_name=None, device=torch.device("cpu"),
                               evaluate=False)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        runner.measure_methods(methods, inputs, dataset_name=None, device=torch.device("cpu"), repeats=0,
                               evaluate=False)
