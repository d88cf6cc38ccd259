"""The benchmark report: best SAHI row, time split table, mask AP columns, timing-only targets."""
import json
import math

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
    assert targets["AutoFocus AP within 1.0 of pyramid"]["holds"]
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
