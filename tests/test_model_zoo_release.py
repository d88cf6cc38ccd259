"""The release tool (autofocus_d2.model_zoo.release, tools/release_checkpoint.py): release a (fake)
training run as its weights alone, named by their hash, with a manifest entry and a MODEL_ZOO.md
row; the checked-in manifest agrees with MODEL_ZOO.md; a release is verified, refused for a run of
another config or without metrics, keeps the weights record and stores float16 with --half.

The released run (the ``released`` fixture) and the private download cache come from
conftest.py; test_model_zoo.py tests loading released models back through the model zoo.
"""
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from autofocus_d2 import model_zoo
from autofocus_d2.model_zoo import model_zoo as zoo_impl
from autofocus_d2.model_zoo import release as rel
from tests.zoo_training_run import DATASET, NAME

pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: a fresh download cache per test


def test_release_keeps_only_the_weights_named_by_their_hash(released):
    info = released["info"]
    ckpt = info.checkpoint
    assert re.fullmatch(r"model_final_[0-9a-f]{6}\.pkl", os.path.basename(ckpt))
    assert os.path.basename(ckpt) == f"model_final_{info.sha256[:6]}.pkl"
    assert model_zoo_sha(ckpt) == info.sha256
    assert os.path.dirname(ckpt) == str(released["root"] / "release" / "Synthetic" /
                                        "autofocus_compact_fpn" / info.sha256[:6])
    with open(ckpt, "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"model", "__author__", "matching_heuristics"}
    assert data["matching_heuristics"] is False
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert set(data["model"]) == set(released["model"].state_dict())
    train_ckpt = torch.load(released["root"] / "train" / "model_final.pth", weights_only=True)
    assert {"optimizer", "scheduler", "iteration"} <= set(train_ckpt)  # what was stripped

    # The resolved config and the metrics beside it.
    with open(info.config) as f, open(released["root"] / "train" / "config.yaml") as g:
        assert f.read() == g.read()
    with open(info.metrics_file) as f:
        assert json.load(f) == info.entry["metrics"]


def model_zoo_sha(path):
    return zoo_impl.sha256_of_file(path)


def test_manifest_entry_and_model_zoo_row(released):
    info, results = released["info"], released["results"]
    with open(released["root"] / "manifest.json") as f:
        manifest = json.load(f)
    entry = manifest[NAME]
    assert entry == info.entry
    assert entry["url"] == (released["root"] / "release").as_uri() + "/" + os.path.relpath(
        info.checkpoint, released["root"] / "release")
    assert entry["sha256"] == info.sha256
    assert entry["date"] == "2025-01-31"
    zoo_cfg = model_zoo.get_config(NAME)
    solver = zoo_cfg.SOLVER
    assert zoo_cfg.INPUT.SNIPER.ENABLED  # the built-in model trains on chips
    schedule = f"{solver.MAX_ITER} it x {solver.IMS_PER_BATCH} chips"
    assert entry["schedule"] == schedule
    m = entry["metrics"]
    assert m["AP"] == results["bbox"]["AP"] and m["AP_small"] == results["bbox"]["APs"]
    assert m["pixel_ratio"] == results["autofocus_efficiency"]["pixel_ratio"]
    assert m["images_per_s"] == pytest.approx(4.0)  # from the log line
    assert m["device"] == "cpu"

    md = released["md"].read_text()
    assert "filled by `make demo`" not in md  # the placeholder row was replaced
    assert info.row in md.split("\n")
    cells = [c.strip() for c in info.row.strip("|").split("|")]
    assert cells[0] == "[Synthetic/autofocus_compact_fpn](configs/Synthetic/autofocus_compact_fpn.yaml)"
    assert cells[1:5] == [schedule, f"{m['AP']:.1f}", f"{m['AP_small']:.1f}", f"{m['pixel_ratio']:.2f}"]
    assert cells[5] == "4.00 (cpu)"
    assert cells[6] == f"[model]({entry['url']})" and cells[7] == f"`{info.sha256[:12]}`"
    # Releasing again replaces the row instead of adding one.
    rel.update_model_zoo_md(str(released["md"]), NAME, info.row)
    assert released["md"].read_text().count("| [Synthetic/autofocus_compact_fpn](") == 1


def _published_rows(md_text):
    """{config name: (url, sha256 prefix)} of the MODEL_ZOO.md rows whose download is a
    ``[model](url)`` link (a published checkpoint, as tools/release_checkpoint.py writes it)."""
    rows = {}
    for line in md_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        link = re.search(r"^\[model\]\((.+)\)$", cells[6]) if len(cells) >= 8 else None
        if link:
            rows[re.search(r"\]\(configs/(.+)\)$", cells[0]).group(1)] = (link.group(1), cells[7].strip("`"))
    return rows


def test_checked_in_manifest_agrees_with_model_zoo_md(repo_root, released):
    # The checked-in manifest is well formed, names only shipped configs, and lists exactly the
    # checkpoints that MODEL_ZOO.md links, with the same url and sha256.
    manifest = model_zoo.load_manifest(zoo_impl.DEFAULT_MANIFEST)
    assert set(manifest) <= set(model_zoo.list_configs())
    with open(os.path.join(repo_root, "MODEL_ZOO.md")) as f:
        rows = _published_rows(f.read())
    assert set(rows) == set(manifest)
    for name, (url, sha) in rows.items():
        # a relative link is relative to MODEL_ZOO.md, a relative url to the manifest
        md_target = os.path.normpath(os.path.join(repo_root, url))
        zoo_target = os.path.normpath(os.path.join(os.path.dirname(zoo_impl.DEFAULT_MANIFEST), manifest[name]["url"]))
        assert md_target == zoo_target and manifest[name]["sha256"].startswith(sha), name
    # The check sees a released row: the fixture's release wrote one into its MODEL_ZOO.md copy.
    info = released["info"]
    assert _published_rows(released["md"].read_text())[NAME] == (info.entry["url"], info.sha256[:12])


def test_release_refuses_a_run_of_another_config(released, tmp_path):
    with pytest.raises(model_zoo.ModelZooError, match=r"differs from configs/COCO-Detection/"
                       r"autofocus_R_50_FPN_1x.yaml in \d+ keys .*MODEL\.BACKBONE\.NAME"):
        rel.release_checkpoint(str(released["root"] / "train"), "COCO-Detection/autofocus_R_50_FPN_1x.yaml",
                               str(tmp_path / "r"))


def test_release_needs_the_metrics(released, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(released["root"] / "train", train)
    os.remove(train / "log.txt")
    with pytest.raises(model_zoo.ModelZooError, match="images_per_s .*--images-per-s"):
        rel.release_checkpoint(str(train), NAME, str(tmp_path / "r"))
    os.remove(train / "metrics.json")
    with pytest.raises(model_zoo.ModelZooError, match=r"metrics.json does not exist.*--metrics"):
        rel.release_checkpoint(str(train), NAME, str(tmp_path / "r"), images_per_s=2.0)
    # Nested results (what DefaultTrainer.test returns) given with --metrics work too.
    results = tmp_path / "results.json"
    results.write_text(json.dumps(released["results"]))
    info = rel.release_checkpoint(str(train), NAME, str(tmp_path / "r"), metrics_file=str(results),
                                  images_per_s=2.0, device="2-core CPU")
    assert info.sha256 == released["info"].sha256  # same weights, same file
    assert info.entry["metrics"]["images_per_s"] == 2.0
    assert info.entry["metrics"]["device"] == "2-core CPU"
    assert info.manifest is None and info.entry["url"] == info.checkpoint


@pytest.mark.slow
def test_release_cli_and_verification(repo_root, released, tmp_path):
    manifest = tmp_path / "manifest.json"
    cmd = [sys.executable, os.path.join(repo_root, "tools", "release_checkpoint.py"),
           "--train-dir", str(released["root"] / "train"), "--config-name", NAME,
           "--release-dir", str(tmp_path / "release"), "--manifest", str(manifest),
           "--verify-on", DATASET]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    sha = released["info"].sha256
    assert f"sha256:     {sha}" in out
    assert "| [Synthetic/autofocus_compact_fpn](configs/Synthetic/autofocus_compact_fpn.yaml) |" in out
    assert f"verified: model_zoo.get({NAME!r}, trained=True) gives AP" in out and "pixel ratio" in out
    entry = json.loads(manifest.read_text())[NAME]
    assert entry["url"] == f"release/Synthetic/autofocus_compact_fpn/{sha[:6]}/model_final_{sha[:6]}.pkl"

    bad = subprocess.run(cmd[:5] + ["COCO-Detection/nope.yaml"] + cmd[6:8], capture_output=True,
                         text=True, cwd=repo_root, timeout=300)
    assert bad.returncode == 1 and "error: 'COCO-Detection/nope.yaml' is not a config" in bad.stderr


def test_verification_names_the_metrics_not_reproduced(released, monkeypatch):
    results = released["results"]
    monkeypatch.setattr(rel, "evaluate_zoo_model", lambda *a, **k: results)
    expected = dict(released["info"].entry["metrics"])
    assert rel.verify_release(NAME, manifest="m.json", dataset=DATASET, expected=expected) is results
    expected["pixel_ratio"] += 0.1
    with pytest.raises(model_zoo.ModelZooError, match=r"does not reproduce its metrics on "
                       r"autofocus_synth_tiny: pixel_ratio [0-9.]+ \(released [0-9.]+\)\. Fix:"):
        rel.verify_release(NAME, manifest="m.json", dataset=DATASET, expected=expected)


def test_schedule_names_follow_detectron2():
    assert rel.schedule_name(model_zoo.get_config("COCO-Detection/autofocus_R_50_FPN_1x.yaml")) == "1x"
    assert rel.schedule_name(model_zoo.get_config("COCO-Detection/autofocus_R_101_FPN_3x.yaml")) == "3x"


def test_release_keeps_the_weights_record_and_half_stores_float16(released, tmp_path):
    from autofocus_d2.checkpoint import AtomicCheckpointer, load_weights
    from autofocus_d2.model_metadata import METADATA_KEY, model_metadata, read_model_metadata

    train = released["root"] / "train"
    cfg = model_zoo.get_config(NAME)
    cfg.DATASETS.TEST = (DATASET,)
    AtomicCheckpointer(released["model"], str(tmp_path), metadata=model_metadata(cfg)).save("with_record")
    info = rel.release_checkpoint(str(train), NAME, str(tmp_path / "release"),
                                  checkpoint=str(tmp_path / "with_record.pth"), half=True)
    with open(info.checkpoint, "rb") as f:
        data = pickle.load(f)
    assert data[METADATA_KEY] == read_model_metadata(str(tmp_path / "with_record.pth"))
    assert read_model_metadata(info.checkpoint)["num_classes"] == cfg.MODEL.ROI_HEADS.NUM_CLASSES
    state = released["model"].state_dict()
    floats = [k for k, v in state.items() if v.dtype == torch.float32]
    assert floats and all(data["model"][k].dtype == np.float16 for k in floats)
    assert os.path.getsize(info.checkpoint) < 0.55 * os.path.getsize(released["info"].checkpoint)
    model = build_model(model_zoo.get_config(NAME))
    load_weights(model, info.checkpoint)  # float16 loads into the float32 model
    for k in floats:
        assert torch.equal(model.state_dict()[k], state[k].half().float()), k
