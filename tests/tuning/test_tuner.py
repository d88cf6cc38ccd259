"""The FocusChip tuner: grid, pick rule, and tools/tune_autofocus.py end to end on the tiny split."""
import json
import os
import subprocess
import sys

import pytest
from detectron2.config import get_cfg

from autofocus_d2.config import add_autofocus_config
from autofocus_d2.tuning import ChipSetting, pick_setting, setting_grid



def _row(t, ratio, ap, lo, hi):
    return {"threshold": t, "dilation": 3, "min_chip_size": 96.0, "pixel_ratio": ratio, "AP": ap,
            "AP_diff_vs_pyramid": ap - 75.0, "AP_diff_ci95": [lo, hi]}


def test_pick_takes_the_fewest_pixels_within_tolerance_by_the_interval():
    rows = [_row(0.1, 0.45, 75.1, -0.3, 0.5), _row(0.3, 0.38, 74.8, -0.45, 0.1),
            _row(0.5, 0.33, 74.9, -0.9, 0.6), _row(0.7, 0.30, 73.0, -2.5, -1.5)]
    pick = pick_setting(rows, tolerance=0.5)
    assert pick["threshold"] == 0.3 and pick["criterion"] == "interval"
    # A tighter tolerance: only the first row's interval is within 0.3.
    assert pick_setting(rows, tolerance=0.3)["threshold"] == 0.1
    # No interval within 0.05: the point difference decides (fewest pixels with diff >= -0.05).
    pick = pick_setting(rows, tolerance=0.05)
    assert pick["threshold"] == 0.1 and pick["criterion"] == "point"
    # Nothing within: the most accurate row, and the pick says so.
    worse = [_row(0.5, 0.33, 74.0, -1.9, -0.1), _row(0.7, 0.30, 73.0, -2.5, -1.5)]
    pick = pick_setting(worse, tolerance=0.5)
    assert pick["threshold"] == 0.5 and pick["criterion"].startswith("none")


def test_grid_is_every_combination_and_checks_values():
    grid = setting_grid([0.1, 0.3], [3], [64, 96])
    assert grid == [ChipSetting(0.1, 3, 64.0), ChipSetting(0.1, 3, 96.0), ChipSetting(0.3, 3, 64.0),
                    ChipSetting(0.3, 3, 96.0)]
    with pytest.raises(ValueError, match="threshold 1.5"):
        setting_grid([1.5], [3], [96])
    with pytest.raises(ValueError, match="dilation 0"):
        setting_grid([0.3], [0], [96])


@pytest.mark.slow
def test_tool_end_to_end_on_the_tiny_split(repo_root, tmp_path):
    """Random-init compact model on 3 tiny images: two settings re-stacked, a pick, its real run,
    and a config fragment that loads. The real run's chips are the re-stacked ones (same scale-0
    maps), so its pixel ratio equals the predicted one."""
    out = tmp_path / "tune"
    cmd = [sys.executable, os.path.join(repo_root, "tools", "tune_autofocus.py"), "--config-file",
           os.path.join(repo_root, "configs", "Synthetic", "autofocus_compact_fpn.yaml"), "--dataset",
           "autofocus_synth_tiny", "--max-images", "3", "--thresholds", "0.3", "0.6", "--dilations", "3",
           "--min-chip-sizes", "96", "--bootstrap-samples", "50", "--output", str(out),
           "--opts", "MODEL.AUTOFOCUS.MIN_PROPOSALS", "50"]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "only 3 images" in proc.stdout
    report = json.loads((out / "tune.json").read_text())
    assert [r["threshold"] for r in report["rows"]] == [0.3, 0.6]
    pick, real = report["pick"], report["confirmed"]
    assert real["pixel_ratio"] == pytest.approx(pick["pixel_ratio"], abs=1e-9)
    assert all(0 < r["pixel_ratio"] <= 1 for r in report["rows"])
    lo, hi = pick["AP_diff_ci95"]
    assert lo <= pick["AP_diff_vs_pyramid"] <= hi
    cfg = get_cfg()
    add_autofocus_config(cfg)
    cfg.merge_from_file(str(out / "tuned.yaml"))
    assert cfg.MODEL.AUTOFOCUS.FOCUS_THRESHOLD == [pick["threshold"]]
    assert cfg.MODEL.AUTOFOCUS.DILATION == [3] and cfg.MODEL.AUTOFOCUS.MIN_CHIP_SIZE == [96.0]
    assert "pick by" in (out / "tuned.yaml").read_text()
    # The compact config keeps every size at some scale: no hole, no object in one.
    assert report["size_holes"]["intervals"] == [] and report["size_holes"]["objects_in_holes"] == 0
