"""The benchmark report: best SAHI row, time split table, mask AP columns, timing-only targets, AP
differences with intervals, time ratios with their spread, saved detections, warnings."""
import json
import math

import pytest

from autofocus_d2.benchmark.report import (
    add_ratios,
    best_sahi,
    check_targets,
    headline_table,
    time_split_table,
    write_report,
)

NAN = float("nan")


def row(method, ap, pixels, time_s, aps=None, mask_ap=NAN, overhead_share=0.02, finer=100.0):
    return {
        "method": method, "AP": ap, "AP50": ap, "APs": ap if aps is None else aps, "APm": ap, "APl": ap,
        "mask_AP": mask_ap, "mask_AP50": mask_ap, "mask_APs": mask_ap, "mask_APm": mask_ap,
        "mask_APl": mask_ap, "pixels_per_image": pixels, "pyramid_pixels_per_image": 1000.0,
        "pixels_per_scale": [pixels], "chips_per_image": 1.0, "median_time_s": time_s,
        "median_detector_ms": 900 * time_s, "median_overhead_ms": 100 * time_s,
        "mean_time_ms": 1000 * time_s, "mean_detector_ms": 1000 * time_s * (1 - overhead_share),
        "mean_overhead_ms": 1000 * time_s * overhead_share, "overhead_share": overhead_share,
        "scale0_ms_per_mpix": 50.0, "finer_ms_per_mpix": finer, "peak_memory_mb": 10.0,
    }


def rows():
    r = [
        row("single", 40.0, 250.0, 0.1, aps=20.0),
        row("pyramid", 60.0, 1000.0, 1.0, finer=100.0),
        row("autofocus", 59.5, 300.0, 0.25, aps=35.0, finer=120.0),
        row("sahi", 50.0, 1600.0, 3.0),
        row("sahi@512", 55.0, 900.0, 1.0),
        row("sahi@256", 55.0, 2500.0, 2.0),
        row("tta", 58.0, 1000.0, 0.9),
    ]
    add_ratios(r)
    return r


def test_best_sahi_is_the_most_accurate_then_the_fastest():
    assert best_sahi(rows())["method"] == "sahi@512"
    timing = [dict(r, AP=NAN) for r in rows()]
    assert best_sahi(timing)["method"] == "sahi@512"  # fastest of 3.0, 1.0, 2.0 s
    assert best_sahi([r for r in rows() if not r["method"].startswith("sahi")]) is None


def test_targets_compare_autofocus_with_the_best_sahi_row_and_check_the_time_split():
    targets = {t["target"]: t for t in check_targets(rows())}
    sahi_px = targets["AutoFocus AP >= best SAHI row (sahi@512) AP with fewer pixels"]
    assert sahi_px["holds"] and sahi_px["measured"] == "AP 59.50 vs 55.00; pixels 300 vs 900"
    sahi_t = targets["AutoFocus >= 3.0x faster than best SAHI row (sahi@512) at no lower AP"]
    assert sahi_t["holds"] and sahi_t["measured"].startswith("4.00x")
    finer = targets["AutoFocus finer-scale ms/Mpix <= 1.1x pyramid's"]
    assert not finer["holds"] and finer["measured"] == "120 vs 100 ms/Mpix (1.20x)"
    overhead = targets["AutoFocus overhead outside detector passes <= 5% of its time"]
    assert overhead["holds"] and overhead["measured"] == "2.0% (5 of 250 ms mean)"
    assert targets["AutoFocus AP within 0.5 of the pyramid"]["holds"]
    assert targets["AutoFocus >= 2.0x faster than pyramid"]["measured"] == "4.00x"


def test_timing_only_rows_leave_the_ap_targets_out():
    timing = [dict(r, AP=NAN, APs=NAN) for r in rows()]
    names = [t["target"] for t in check_targets(timing)]
    assert not any("AP" in n for n in names)
    assert "AutoFocus >= 2.0x faster than pyramid" in names


def test_tables_show_the_time_split_and_mask_ap_only_when_measured():
    r = rows()
    assert "mask AP" not in headline_table(r)
    r[2]["mask_AP"] = 51.25
    table = headline_table(r)
    assert "mask AP" in table and "51.25" in table
    split = time_split_table(r).splitlines()
    assert "overhead ms" in split[0] and "finer ms/Mpix" in split[0]
    af = next(line for line in split if line.startswith("| autofocus"))
    assert [c.strip() for c in af.strip("|").split("|")] == ["autofocus", "250", "225", "25", "2.0%", "50", "120"]


def test_write_report_has_the_time_split_in_json_and_markdown(tmp_path):
    report = {"dataset": "d", "images": 2, "config": "c.yaml", "weights": "w.pth", "device": "cpu",
              "date": "2026-11-29", "warmup": 1, "methods": rows(), "skipped": {}, "sweep": [],
              "targets": check_targets(rows()), "timing_only": False}
    paths = write_report(report, str(tmp_path))
    with open(paths["json"]) as f:
        saved = json.load(f)
    af = next(r for r in saved["methods"] if r["method"] == "autofocus")
    assert af["median_overhead_ms"] == 25.0 and af["finer_ms_per_mpix"] == 120.0
    assert math.isnan(af["mask_AP"])
    md = open(paths["md"]).read()
    assert "## Time split" in md and "scale-0 ms/Mpix" in md


def repeated_rows():
    """Rows timed in 3 passes (the sweep-like row in 1), with AP differences and intervals."""
    r = rows()
    times = {"single": [0.1, 0.12, 0.11], "pyramid": [1.0, 1.2, 0.8], "autofocus": [0.25, 0.24, 0.28]}
    for row_ in r:
        row_["repeat_median_time_s"] = times.get(row_["method"], [row_["median_time_s"]])
        row_["AP_diff_vs_pyramid"] = row_["AP"] - 60.0
        row_["AP_diff_ci95"] = [row_["AP"] - 61.0, row_["AP"] - 59.25]
    add_ratios(r)
    return r


def test_time_ratios_are_taken_pass_by_pass_with_their_spread():
    by = {x["method"]: x for x in repeated_rows()}
    af = by["autofocus"]
    assert af["repeat_time_ratios"] == pytest.approx([0.25, 0.2, 0.35])
    assert af["time_ratio"] == pytest.approx(0.25) and af["time_ratio_spread"] == pytest.approx([0.2, 0.35])
    assert by["pyramid"]["time_ratio_spread"] == [1.0, 1.0]
    # A row timed once (a sweep setting) is compared with the pyramid's first pass.
    assert by["tta"]["repeat_time_ratios"] == pytest.approx([0.9]) and by["tta"]["time_ratio"] == pytest.approx(0.9)
    plain = rows()  # no per-pass times: the ratio of the medians, no spread
    assert plain[2]["time_ratio"] == pytest.approx(0.25) and plain[2]["time_ratio_spread"] is None


def test_the_ap_target_is_half_a_point_on_the_point_difference_with_its_interval():
    r = repeated_rows()
    targets = {t["target"]: t for t in check_targets(r)}
    ap = targets["AutoFocus AP within 0.5 of the pyramid"]
    assert ap["holds"] and ap["measured"] == "AP 59.50 vs 60.00: -0.50 (95% CI [-1.50, +0.25])"
    speed = targets["AutoFocus >= 2.0x faster than pyramid"]
    assert speed["measured"] == "4.00x (2.86-5.00x over 3 timed passes)"
    r[2]["AP_diff_vs_pyramid"] = -0.51  # judged on the difference, not the AP columns
    assert not {t["target"]: t for t in check_targets(r)}["AutoFocus AP within 0.5 of the pyramid"]["holds"]


def test_the_headline_table_has_the_difference_its_interval_and_the_ratio_spread():
    lines = headline_table(repeated_rows()).splitlines()
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    assert headers[:4] == ["method", "AP", "AP diff", "95% CI"] and "ratio spread" in headers
    af = [c.strip() for c in next(x for x in lines if x.startswith("| autofocus")).strip("|").split("|")]
    assert af[:4] == ["autofocus", "59.50", "-0.50", "[-1.50, +0.25]"]
    assert af[headers.index("time ratio")] == "0.25" and af[headers.index("ratio spread")] == "0.20-0.35"
    assert "AP diff" not in headline_table(rows())  # not measured: no columns


def report_of(r, **extra):
    return {"dataset": "trees_val", "images": 3, "config": "c.yaml", "weights": "w.pth", "device": "cpu",
            "date": "2026-12-01", "warmup": 1, "repeats": 3, "bootstrap_samples": 1000, "methods": r,
            "skipped": {}, "sweep": [], "timing_only": False, **extra}


def test_other_data_gets_differences_and_spreads_instead_of_verdicts(tmp_path):
    from autofocus_d2.benchmark.report import summary_text

    dets = {"pyramid": [{"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}],
            "autofocus": []}
    warning = "only 3 images: AP differences and their intervals say little below 10 images"
    report = report_of(repeated_rows(), targets=[], targets_checked=False, warnings=[warning], detections=dets,
                       scale0_agreement={"ms_per_mpix": {"single": 50.0, "pyramid": 60.0}, "max_over_min": 1.2,
                                         "tolerance": 0.1, "flagged": True})
    text = summary_text(report)
    assert "[WARNING] " + warning in text and "[ok]" not in text and "MISSED" not in text
    assert ("autofocus vs pyramid: AP -0.50 (95% CI [-1.50, +0.25]); pixels x0.300; "
            "time x0.25 (0.20-0.35 over 3 timed passes)") in text
    paths = write_report(report, str(tmp_path))
    saved = json.load(open(paths["json"]))
    assert saved["detections"] == {"pyramid": "detections/pyramid.json", "autofocus": "detections/autofocus.json"}
    assert json.load(open(tmp_path / "detections" / "pyramid.json")) == dets["pyramid"]
    assert json.load(open(tmp_path / "detections" / "autofocus.json")) == []
    af = next(x for x in saved["methods"] if x["method"] == "autofocus")
    assert af["AP_diff_vs_pyramid"] == -0.5 and af["AP_diff_ci95"] == [-1.5, 0.25]
    md = open(paths["md"]).read()
    assert f"> **Warning**: {warning}" in md and "## Against the pyramid" in md
    assert "Not checked: the demo's targets were set for the built-in dataset" in md
    assert "timed 1.20x apart within a timed pass (median over passes) -- more than the 10% tolerance" in md
    header = next(x for x in md.splitlines() if x.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")][2:4] == ["AP diff", "95% CI"]
