"""The large-frame benchmark split (autofocus_synth_large_val): deterministic, 2000-4000 px a side."""
import hashlib
import json
import os

import pytest
from detectron2.data import MetadataCatalog

import autofocus_d2  # noqa: F401  (registers the built-in datasets)
from autofocus_d2.data import SYNTHETIC_SPLITS, generate_synthetic_split


def _digests(json_path):
    folder = os.path.dirname(json_path)
    files = [json_path] + sorted(
        os.path.join(folder, "images", f) for f in os.listdir(os.path.join(folder, "images"))
    )
    return {os.path.relpath(f, folder): hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}


def test_large_val_is_registered_with_its_spec():
    spec = SYNTHETIC_SPLITS["large_val"]
    assert spec.side_range == (2000, 4000)
    assert 10 <= spec.num_images <= 20
    meta = MetadataCatalog.get("autofocus_synth_large_val")
    assert meta.synthetic_split == "large_val"
    assert meta.evaluator_type == "coco"


@pytest.mark.slow  # renders large frames twice (about 3 s)
def test_large_frames_are_deterministic_and_in_size_range(tmp_path):
    # Two images (about 1 s): image i depends only on (seed, i), so this checks the whole split.
    first = generate_synthetic_split(str(tmp_path / "a"), "large_val", num_images=2)
    again = generate_synthetic_split(str(tmp_path / "b"), "large_val", num_images=2)
    other = generate_synthetic_split(str(tmp_path / "c"), "large_val", num_images=2, seed=4001)
    assert os.path.basename(os.path.dirname(first)) == "large_val-seed4000-n2"
    digests = _digests(first)
    assert len(digests) == 3  # the json and two images
    assert digests == _digests(again)
    assert set(digests.values()).isdisjoint(_digests(other).values())

    with open(first) as f:
        coco = json.load(f)
    for im in coco["images"]:
        assert 2000 <= im["width"] <= 4000 and 2000 <= im["height"] <= 4000, im
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        im = coco["images"][ann["image_id"] - 1]
        assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"], ann
    # Mostly small objects, as in the other splits, and more of them per frame (2-6 clusters).
    small = sum(a["area"] < 32**2 for a in coco["annotations"])
    assert len(coco["annotations"]) >= 2 * 10 * 2 * 0.5
    assert small / len(coco["annotations"]) > 0.5


@pytest.mark.slow
def test_r50_fpn_large_config_builds_from_scratch_and_runs_single_on_a_small_image():
    import torch
    from detectron2.layers import FrozenBatchNorm2d
    from detectron2.modeling import build_model

    from autofocus_d2 import model_zoo

    cfg = model_zoo.get_config("Synthetic/autofocus_R_50_FPN_large.yaml")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NORM, cfg.MODEL.FPN.NORM) == (50, "GN", "GN")
    assert len(cfg.MODEL.AUTOFOCUS.SCALES) == 3
    assert cfg.DATASETS.TEST == ("autofocus_synth_large_val",)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.AUTOFOCUS.CHIP_POLICY = "single"
    torch.manual_seed(0)
    model = build_model(cfg)
    # Trainable from scratch: every parameter learns, GroupNorm instead of frozen BatchNorm.
    assert all(p.requires_grad for p in model.parameters())
    norms = [type(m).__name__ for m in model.backbone.modules()]
    assert "GroupNorm" in norms and not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) > 40e6  # R-50-FPN, not the compact model

    model.eval()
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(0)).float()
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 96, "width": 128}])
    assert out["instances"].image_size == (96, 128)
    assert out["instances"].has("pred_boxes") and out["instances"].has("scores")
    stats = out["autofocus"]
    # single: scale 0 only, the whole 96 x 128 image zoomed to shorter side 768 (longer <= 1024).
    assert stats["chips_per_scale"] == [1]
    assert stats["pixels_per_scale"] == [768 * 1024]
