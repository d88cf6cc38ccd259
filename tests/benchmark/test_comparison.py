"""How sure the benchmark is: AP differences with paired intervals against the pyramid, the
scale-0 timing check, and the warnings a run carries."""
import math

import pytest

from autofocus_d2.benchmark.comparison import (
    add_ap_differences,
    is_builtin_dataset,
    run_warnings,
    scale0_agreement,
)
from autofocus_d2.evaluation import paired_ap_difference


def test_every_row_gets_its_difference_to_the_pyramid_on_the_same_resamples(planted_coco, noisy_detections):
    coco, perfect = planted_coco(12, 3, seed=2)
    pyramid = noisy_detections(perfect, seed=1)
    results = {"pyramid": pyramid, "autofocus": noisy_detections(perfect, seed=2), "perfect": perfect}
    rows = [{"method": m} for m in ("pyramid", "autofocus", "perfect", "sahi")]  # sahi: no results
    ids = sorted(coco.getImgIds())[:10]
    add_ap_differences(rows, results, coco, ids, num_samples=150, seed=3)
    by = {r["method"]: r for r in rows}
    assert by["pyramid"]["AP_diff_vs_pyramid"] == 0.0 and by["pyramid"]["AP_diff_ci95"] == [0.0, 0.0]
    for name in ("autofocus", "perfect"):
        expected = paired_ap_difference(coco, results[name], pyramid, num_samples=150, seed=3, image_ids=ids)
        assert by[name]["AP_diff_vs_pyramid"] == pytest.approx(expected["diff"], abs=1e-12)
        assert by[name]["AP_diff_ci95"] == pytest.approx(expected["ci95"], abs=1e-12)
    assert by["perfect"]["AP_diff_ci95"][0] > 0  # perfect boxes beat jittered ones on every resample
    assert math.isnan(by["sahi"]["AP_diff_vs_pyramid"]) and all(math.isnan(v) for v in by["sahi"]["AP_diff_ci95"])
    no_pyramid = [{"method": "autofocus"}]
    add_ap_differences(no_pyramid, {"autofocus": perfect}, coco, ids)
    assert math.isnan(no_pyramid[0]["AP_diff_vs_pyramid"])


def test_identical_scale0_passes_are_flagged_when_more_than_10_percent_apart_within_a_pass():
    rows = [{"method": "single", "scale0_ms_per_mpix": 100.0}, {"method": "pyramid", "scale0_ms_per_mpix": 109.0},
            {"method": "autofocus", "scale0_ms_per_mpix": 104.0}, {"method": "tta", "scale0_ms_per_mpix": 300.0},
            {"method": "oracle", "scale0_ms_per_mpix": None}]
    same = ("single", "pyramid", "autofocus", "oracle")
    ok = scale0_agreement(rows, same)  # tta's scale 0 is another computation: not compared
    assert ok["ms_per_mpix"] == {"single": 100.0, "pyramid": 109.0, "autofocus": 104.0}
    assert ok["max_over_min"] == pytest.approx(1.09) and not ok["flagged"]
    rows[1]["scale0_ms_per_mpix"] = 111.0
    bad = scale0_agreement(rows, same)
    assert bad["flagged"] and bad["max_over_min"] == pytest.approx(1.11)
    assert scale0_agreement(rows, ("single", "oracle")) is None  # fewer than two timed
    warnings = run_warnings(40, bad)
    assert len(warnings) == 1 and warnings[0].startswith("identical scale-0 passes were timed 1.11x apart")
    assert run_warnings(40, ok) == [] and run_warnings(40, None) == []


def test_the_scale0_check_compares_methods_within_each_timed_pass():
    """The machine doubles its speed between passes; within a pass the methods agree to 5%. A
    sweep setting, timed in the first pass only, is compared with that pass."""
    rows = [{"method": "single", "repeat_scale0_ms_per_mpix": [200.0, 100.0, 150.0]},
            {"method": "pyramid", "repeat_scale0_ms_per_mpix": [210.0, 104.0, 155.0]},
            {"method": "autofocus@0.1", "repeat_scale0_ms_per_mpix": [205.0]}]
    out = scale0_agreement(rows, ("single", "pyramid", "autofocus@0.1"))
    assert out["per_pass_max_over_min"] == pytest.approx([1.05, 1.04, 155 / 150])
    assert out["max_over_min"] == pytest.approx(1.04) and not out["flagged"]  # the median pass
    assert out["ms_per_mpix"] == {"single": 150.0, "pyramid": 155.0, "autofocus@0.1": 205.0}
    rows[1]["repeat_scale0_ms_per_mpix"] = [240.0, 104.0, 170.0]  # pyramid 20% slower in two passes
    out = scale0_agreement(rows, ("single", "pyramid", "autofocus@0.1"))
    assert out["max_over_min"] == pytest.approx(170 / 150) and out["flagged"]


def test_a_split_of_fewer_than_10_images_is_warned_about(caplog):
    assert run_warnings(10, None) == []
    with caplog.at_level("WARNING"):
        (warning,) = run_warnings(9, None)
    assert warning.startswith("only 9 images") and warning in caplog.text


def test_only_the_built_in_dataset_is_judged_by_the_demo_targets():
    assert is_builtin_dataset("autofocus_synth_val") and is_builtin_dataset("autofocus_synth_large_val")
    assert not is_builtin_dataset("trees_val") and not is_builtin_dataset("coco_2017_val")
