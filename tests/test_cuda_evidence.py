"""tools/cuda_evidence.py end to end in its CPU mode (tiny sizes): every section runs and lands in
the one JSON and its tables."""
import json

import pytest
import torch



def _cuda_evidence():
    from tools import cuda_evidence

    return cuda_evidence


@pytest.mark.slow
def test_cpu_smoke_runs_every_section_into_one_json(tmp_path):
    tool = _cuda_evidence()
    assert tool.canvases("512x512,1024x768") == [[512, 512], [1024, 768]]
    assert tool.main(["--cpu-smoke", "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "cuda_evidence.json").read_text())
    env = result["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and result["cpu_smoke"] is True
    sections = result["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {
        "cuda_tests": "ok", "demo": "ok", "large": "ok", "profile": "ok"}
    assert sections["cuda_tests"]["result"]["returncode"] in (0, 5)  # passed, or nothing selected on CPU
    runs = sections["demo"]["result"]["runs"]
    assert sorted(runs) == ["bfloat16", "float32"]
    for run in runs.values():
        methods = [r["method"] for r in run["rows"]]
        assert methods[:3] == ["single", "pyramid", "autofocus"] and methods[-1] == "autofocus+canvases"
        assert all(r["median_time_s"] > 0 and 0 <= r["AP"] <= 100 for r in run["rows"])
        pyramid = next(r for r in run["rows"] if r["method"] == "pyramid")
        assert pyramid["speed_vs_pyramid"] == 1.0
    large = {r["method"]: r for r in sections["large"]["result"]["rows"]}
    assert sorted(large) == ["autofocus", "autofocus+canvases", "oracle", "oracle+canvases", "pyramid+canvases"]
    # Canvases change how chips are run, not which pixels are processed.
    assert large["oracle"]["pixels_per_image"] == large["oracle+canvases"]["pixels_per_image"]
    top = sections["profile"]["result"]["top_ops"]
    assert len(top) >= 5 and all(op["self_cpu_ms"] >= 0 for op in top)
    table = (tmp_path / "cuda_evidence.md").read_text()
    assert "## Demo model, float32" in table and "autofocus+canvases" in table and "R50-FPN large frames" in table
