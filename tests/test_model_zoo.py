"""autofocus_d2.model_zoo: configs by name, and a released model loaded back through a manifest
with the same weights and the same AP; every failure (checksum, missing file, no network, unknown
name, malformed manifest) names the file and the fix.

The fake training run (tests/zoo_training_run.py), released into a folder published as file://
URLs, is conftest.py's ``released`` fixture, shared with test_model_zoo_release.py, which tests
the release tool itself; every test runs with conftest.py's ``private_cache``.
"""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from autofocus_d2 import model_zoo
from autofocus_d2.model_zoo import model_zoo as zoo_impl
from autofocus_d2.model_zoo import release as rel
from autofocus_d2.modeling import AutoFocusRCNN
from tests.zoo_training_run import DATASET, NAME, evaluate, same_results

pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a fresh download cache per test


# ---------------------------------------------------------------------------------- configs
def test_config_files_resolve_from_the_source_tree(repo_root):
    path = model_zoo.get_config_file(NAME)
    assert path == os.path.join(repo_root, "configs", "Synthetic", "autofocus_compact_fpn.yaml")
    assert model_zoo.get_config_file("Synthetic/autofocus_compact_fpn") == path  # .yaml optional
    cfg = model_zoo.get_config(NAME)
    assert cfg.MODEL.META_ARCHITECTURE == "AutoFocusRCNN" and cfg.MODEL.WEIGHTS == ""
    model = model_zoo.get(NAME, device="cpu")
    assert isinstance(model, AutoFocusRCNN) and model.training  # as detectron2.model_zoo.get
    assert model.device.type == "cpu"


def test_unknown_config_name(tmp_path):
    with pytest.raises(model_zoo.UnknownModelError, match=r"'COCO-Detection/nope.yaml' is not a config.*"
                       r"Available: .*COCO-Detection/autofocus_R_50_FPN_1x.yaml"):
        model_zoo.get_config_file("COCO-Detection/nope.yaml")
    for bad in ("../setup.py", "/etc/passwd", ""):
        with pytest.raises(model_zoo.UnknownModelError):
            model_zoo.get_config_file(bad)


@pytest.mark.slow
def test_installed_package_ships_the_configs(repo_root, tmp_path):
    """setup.py puts configs/ into the package as autofocus_d2/model_zoo/configs, and the model zoo
    finds them there when there is no source tree around the package."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("setup.py", "README.md"):
        shutil.copy(os.path.join(repo_root, f), src / f)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("autofocus_d2", "configs"):
        shutil.copytree(os.path.join(repo_root, d), src / d, ignore=ignore)
    build = tmp_path / "lib"
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
                          cwd=src, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shipped = sorted(str(p.relative_to(build / "autofocus_d2/model_zoo/configs"))
                     for p in (build / "autofocus_d2/model_zoo/configs").rglob("*")
                     if p.suffix in (".yaml", ".py") and not p.name.startswith("__"))
    assert shipped == model_zoo.list_configs()
    assert (build / "autofocus_d2/model_zoo/manifest.json").is_file()
    for entry in model_zoo.load_manifest(zoo_impl.DEFAULT_MANIFEST).values():
        assert (build / "autofocus_d2/model_zoo" / entry["url"]).is_file(), entry["url"]

    code = ("from autofocus_d2 import model_zoo; print(model_zoo.configs_dir()); "
            "print(model_zoo.get_config('COCO-Detection/autofocus_R_50_C4_1x.yaml').MODEL.ROI_HEADS.NAME)")
    env = {**os.environ, "PYTHONPATH": str(build), "AUTOFOCUS_DATA": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    assert lines == [str(build / "autofocus_d2" / "model_zoo" / "configs"), "SNIPERRes5ROIHeads"]


# ---------------------------------------------------------------- released models, loaded back
@pytest.mark.slow
def test_round_trip_same_weights_and_same_ap(released):
    manifest = str(released["root"] / "manifest.json")
    assert model_zoo.get_checkpoint_url(NAME, manifest=manifest).startswith("file://")
    cfg = model_zoo.get_config(NAME, trained=True, manifest=manifest)
    assert cfg.MODEL.WEIGHTS == released["info"].checkpoint  # the verified local file

    loaded = model_zoo.get(NAME, trained=True, device="cpu", manifest=manifest)
    original = released["model"].state_dict()
    state = loaded.state_dict()
    assert set(state) == set(original)
    for k, v in original.items():
        assert torch.equal(state[k], v), k
    assert same_results(evaluate(loaded), released["results"])
    # The same detections, not only the same AP (a random-init model's AP is about 0).
    image = torch.as_tensor(read_image(DatasetCatalog.get(DATASET)[0]["file_name"], "BGR").copy())
    inputs = [{"image": image.permute(2, 0, 1).float()}]
    released["model"].eval()
    with torch.no_grad():
        a, b = released["model"](inputs)[0], loaded(inputs)[0]
    assert len(a["instances"]) > 0
    for field in ("pred_boxes", "scores", "pred_classes"):
        x, y = a["instances"].get(field), b["instances"].get(field)
        x, y = (x.tensor, y.tensor) if field == "pred_boxes" else (x, y)
        assert torch.equal(x, y), field
    assert a["autofocus"] == b["autofocus"]
    assert sum(a["autofocus"]["pixels_per_scale"]) < sum(a["autofocus"]["pyramid_pixels_per_scale"])


def test_manifest_from_the_environment_and_relative_urls(released, tmp_path, monkeypatch):
    """A url without scheme is a path relative to the manifest's folder."""
    info = released["info"]
    manifest = tmp_path / "m" / "manifest.json"
    rel.update_manifest(str(manifest), NAME, {**info.entry, "url": os.path.relpath(
        info.checkpoint, manifest.parent)})
    monkeypatch.setenv(model_zoo.MANIFEST_ENV, str(manifest))
    assert model_zoo.get_checkpoint_url(NAME) == info.checkpoint
    assert model_zoo.get_checkpoint(NAME) == info.checkpoint


def test_checksum_is_verified_once_and_again_when_the_file_changes(released, tmp_path, monkeypatch):
    info = released["info"]
    ckpt = tmp_path / "copy" / os.path.basename(info.checkpoint)
    ckpt.parent.mkdir()
    shutil.copy(info.checkpoint, ckpt)
    manifest = tmp_path / "manifest.json"
    rel.update_manifest(str(manifest), NAME, {**info.entry, "url": ckpt.as_uri()})

    calls = []
    real = zoo_impl.sha256_of_file
    monkeypatch.setattr(zoo_impl, "sha256_of_file", lambda p: calls.append(p) or real(p))
    assert model_zoo.get_checkpoint(NAME, manifest=str(manifest)) == str(ckpt)
    assert model_zoo.get_checkpoint(NAME, manifest=str(manifest)) == str(ckpt)
    assert calls == [str(ckpt)]  # the marker spares the second hashing
    markers = list((tmp_path / "iopath_cache" / "autofocus_d2" / "verified").glob("*.json"))
    assert len(markers) == 1

    # Alter the file: the marker no longer matches, the sha256 is checked and fails.
    data = bytearray(ckpt.read_bytes())
    data[-10] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    with pytest.raises(model_zoo.ChecksumMismatchError) as e:
        model_zoo.get(NAME, trained=True, device="cpu", manifest=str(manifest))
    msg = str(e.value)
    assert str(ckpt) in msg and info.sha256 in msg and "Fix:" in msg
    assert "tools/release_checkpoint.py" in msg


def test_checksum_mismatch_of_the_manifest(released, tmp_path):
    manifest = tmp_path / "manifest.json"
    rel.update_manifest(str(manifest), NAME, {**released["info"].entry, "sha256": "0" * 64})
    with pytest.raises(model_zoo.ChecksumMismatchError, match="Checksum mismatch for checkpoint .*"
                       r"model_final_[0-9a-f]{6}\.pkl.*expects 0{64}\. Fix:"):
        model_zoo.get_config(NAME, trained=True, manifest=str(manifest))


def test_unknown_name_in_the_manifest(released):
    manifest = str(released["root"] / "manifest.json")
    with pytest.raises(model_zoo.UnknownModelError) as e:
        model_zoo.get("COCO-Detection/autofocus_R_50_FPN_1x.yaml", trained=True, manifest=manifest)
    msg = str(e.value)
    assert manifest in msg and f"released: {NAME}" in msg and "tools/release_checkpoint.py" in msg


def test_missing_file_and_missing_network(released, tmp_path):
    entry = released["info"].entry
    manifest = tmp_path / "manifest.json"
    missing = tmp_path / "gone" / "model_final_abcdef.pkl"
    rel.update_manifest(str(manifest), NAME, {**entry, "url": missing.as_uri()})
    with pytest.raises(model_zoo.CheckpointFetchError, match=re.escape(str(missing)) +
                       r" .*does not exist\. Fix: release it with tools/release_checkpoint.py"):
        model_zoo.get(NAME, trained=True, device="cpu", manifest=str(manifest))

    # Nothing listens on port 9 of this machine: the download fails as without a network.
    url = "http://127.0.0.1:9/zoo/model_final_abcdef.pkl"
    rel.update_manifest(str(manifest), NAME, {**entry, "url": url})
    with pytest.raises(model_zoo.CheckpointFetchError) as e:
        model_zoo.get_checkpoint(NAME, manifest=str(manifest))
    msg = str(e.value)
    assert f"Could not download the checkpoint of {NAME!r} from {url}" in msg
    assert "Fix: check the network connection" in msg and "local copy" in msg


def test_malformed_manifest(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({NAME: {"url": "x.pkl", "sha256": "abc"}}))
    with pytest.raises(model_zoo.ModelZooError, match="'sha256' of 64 hex digits"):
        model_zoo.get_checkpoint_url(NAME, manifest=str(bad))
    with pytest.raises(model_zoo.ModelZooError, match="does not exist"):
        model_zoo.get_checkpoint_url(NAME, manifest=str(tmp_path / "none.json"))


@pytest.mark.parametrize("name", ["Synthetic/autofocus_compact_fpn.yaml",
                                  "Synthetic/autofocus_compact_mask_fpn.yaml"])
def test_shipped_reference_model_loads_on_a_fresh_checkout(name):
    """model_zoo.get(..., trained=True) with the checked-in manifest: the shipped file (a relative
    url, under the 5 MB limit for binaries) passes its sha256 and loads every parameter."""
    entry = model_zoo.load_manifest(zoo_impl.DEFAULT_MANIFEST)[name]
    path = model_zoo.get_checkpoint(name)
    assert os.path.isfile(path) and os.path.getsize(path) < 5 * 1024 * 1024
    with open(path, "rb") as f:
        released = pickle.load(f, encoding="latin1")["model"]
    floats = {str(v.dtype) for v in released.values() if v.dtype.kind == "f"}
    assert floats == {"float16"}  # released with --half
    model = model_zoo.get(name, trained=True, device="cpu")
    state = model.state_dict()
    assert set(released) <= set(state)
    for k, v in released.items():
        assert torch.equal(state[k], torch.from_numpy(v).to(state[k].dtype)), k
    assert set(entry["metrics"]) >= {"AP", "AP_small", "pixel_ratio", "images_per_s"}
