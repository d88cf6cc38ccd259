"""tools/run_demo.py reuses a trained model only when it was trained with the demo's config."""


def _run_demo():
    from tools import run_demo

    return run_demo


def test_stale_keys_name_what_changed_since_training(tmp_path):
    run_demo = _run_demo()
    cfg = run_demo.load_cfg("", [])
    (tmp_path / "config.yaml").write_text(cfg.dump())
    assert run_demo.stale_keys(str(tmp_path), []) == []
    # The same model with another head width, or trained with other opts: not reusable.
    assert run_demo.stale_keys(str(tmp_path), ["MODEL.FOCUS_HEAD.CONV_DIM", "32"]) == ["MODEL.FOCUS_HEAD.CONV_DIM"]
    assert run_demo.stale_keys(str(tmp_path), ["SOLVER.MAX_ITER", "10"]) == ["SOLVER.MAX_ITER"]
    # Where the evaluation goes, and the inference-only AutoFocus settings, do not matter.
    assert run_demo.stale_keys(str(tmp_path), ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", "elsewhere"]) == []
    assert run_demo.stale_keys(str(tmp_path), ["MODEL.AUTOFOCUS.FOCUS_THRESHOLD", "[0.7]"]) == []


def test_a_config_of_an_older_version_is_stale(tmp_path):
    run_demo = _run_demo()
    (tmp_path / "config.yaml").write_text("MODEL:\n  AUTOFOCUS:\n    ZOOMS: [1.0]\n")
    stale = run_demo.stale_keys(str(tmp_path), [])
    assert len(stale) == 1 and "ZOOMS" in stale[0]
    assert "config.yaml" in run_demo.stale_keys(str(tmp_path / "missing"), [])[0]
