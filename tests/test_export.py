"""The traced per-view detector runs the AutoFocus pipeline with the eager model's outputs."""
import os
import re
import warnings

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from detectron2.data import MetadataCatalog

from autofocus_d2 import model_zoo
from autofocus_d2.export import (
    TracedFocusDetector, export_focus_detector, export_from_weights, load_focus_detector,
    save_focus_detector)
from autofocus_d2.inference.pipeline import build_autofocus_pipeline
from autofocus_d2.model_metadata import ModelMetadataError


def export_cfg(**autofocus):
    cfg = model_zoo.get_config("Synthetic/autofocus_compact_fpn.yaml")
    cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX = 0.0  # one proposal budget for every view
    cfg.MODEL.AUTOFOCUS.CHIP_BATCH_SIZE = 1  # the traced graph takes one view at a time
    cfg.MODEL.AUTOFOCUS.FOCUS_THRESHOLD = [0.45]  # random weights: some chips, not everything
    # Scale 0 below the original on the test's 380-700 px images (the compact chain's shorter side
    # 512 would zoom them up, and scale 1 is then skipped as no finer).
    cfg.MODEL.AUTOFOCUS.SCALES = [[256, 384], [-1, -1]]
    for k, v in autofocus.items():
        setattr(cfg.MODEL.AUTOFOCUS, k, v)
    return cfg


def random_model(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Random init gives ~0.5 everywhere; a bias spreads the FocusPixel map over both sides of the
    # threshold, so the chip step (and the traced focus maps) is exercised.
    with torch.no_grad():
        model.focus_head.predictor.weight.mul_(50.0)
    return model


@pytest.mark.slow
def test_traced_detector_equals_eager_through_the_pipeline(tmp_path):
    cfg = export_cfg()
    model = random_model(cfg)
    torch.manual_seed(1)
    images = [(torch.rand(3, h, w) * 255).round() for h, w in ((420, 600), (700, 380))]
    traced = export_focus_detector(model, images[0])
    save_focus_detector(traced, str(tmp_path / "detector.ts"))
    exported = load_focus_detector(str(tmp_path / "detector.ts"))  # settings restored from the file
    assert (exported.focus_stride, exported.size_divisibility, exported.input_channels) == (
        model.focus_stride, model.backbone.size_divisibility, len(cfg.MODEL.PIXEL_MEAN))
    pipeline = build_autofocus_pipeline(cfg)
    with torch.no_grad():
        for image in images:
            eager = model([{"image": image}])[0]
            ours = pipeline(exported, [{"image": image}])[0]
            assert ours["autofocus"]["chips_per_scale"] == eager["autofocus"]["chips_per_scale"]
            assert ours["autofocus"]["chip_boxes_per_scale"] == eager["autofocus"]["chip_boxes_per_scale"]
            assert eager["autofocus"]["chips_per_scale"][1] >= 1  # the finer scale was run
            a, b = eager["instances"], ours["instances"]
            assert len(a) == len(b) > 0
            torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=1e-4)
            assert torch.equal(b.pred_classes, a.pred_classes)


def test_export_refuses_a_per_view_proposal_budget():
    cfg = export_cfg(PROPOSALS_PER_MPIX=500.0)
    model = random_model(cfg)
    with pytest.raises(ValueError, match="PROPOSALS_PER_MPIX"):
        export_focus_detector(model, torch.zeros(3, 128, 128))
    with pytest.raises(ValueError, match="eval mode"):
        export_focus_detector(model.train(), torch.zeros(3, 128, 128))


@pytest.mark.slow
def test_traced_detector_refuses_another_view_mode():
    cfg = export_cfg()
    model = random_model(cfg)
    traced = export_focus_detector(model, torch.zeros(3, 128, 160))
    exported = TracedFocusDetector(traced, focus_stride=16, pixel_mean=cfg.MODEL.PIXEL_MEAN,
                                   size_divisibility=32, raw_score_thresh=0.001)
    with pytest.raises(ValueError, match="raw_score_thresh"):
        exported.detect(exported.normalize([torch.zeros(3, 64, 64)]), raw_score_thresh=None)


def deployment_snippet() -> str:
    """The export snippet of docs/deployment.md, as written."""
    doc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "deployment.md")
    with open(doc) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    (snippet,) = [b for b in blocks if "export_focus_detector(model, sample_image" in b]
    return snippet


def one_class_checkpoint(recorded_checkpoint, dataset):
    """(model, weights): a random-init one-class model ("tree") saved with its record, as
    train_net.py writes it; ``dataset`` (its DATASETS.TEST) is unregistered again afterwards, so the
    names a tool shows can only come from the weights."""
    cfg = model_zoo.get_config("Synthetic/autofocus_compact_fpn.yaml")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = (dataset,)
    MetadataCatalog.get(dataset).set(thing_classes=["tree"])
    model = random_model(cfg)
    weights = recorded_checkpoint(model, cfg)
    MetadataCatalog.remove(dataset)
    return model, weights


@pytest.mark.slow
def test_deployment_snippet_runs_as_written(tmp_path, monkeypatch, capsys, recorded_checkpoint):
    from PIL import Image

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _, weights = one_class_checkpoint(recorded_checkpoint, "wtf_export_snippet_trees")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "image.jpg")
    snippet = deployment_snippet()
    for path in ("output/demo/train/model_final.pth", "image.jpg", "detector.ts"):
        assert f'"{path}"' in snippet  # the snippet's own paths, replaced by the test's files
    snippet = (snippet.replace('"output/demo/train/model_final.pth"', repr(weights))
               .replace('"image.jpg"', repr(str(tmp_path / "image.jpg")))
               .replace('"detector.ts"', repr(str(tmp_path / "detector.ts"))))
    monkeypatch.chdir(repo)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # silenced by the export
        namespace = {}
        exec(compile(snippet, "deployment.md", "exec"), namespace)
    assert (tmp_path / "detector.ts").is_file()
    cfg, outputs, detector = namespace["cfg"], namespace["outputs"], namespace["detector"]
    # The weights alone gave the config (their class count) and the class names, kept in the file.
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1 and cfg.DATASETS.TEST == ("wtf_export_snippet_trees",)
    assert detector.thing_classes == ["tree"]
    assert cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX == 0.0  # the integer "0" was accepted
    assert "instances" in outputs[0] and "autofocus" in outputs[0]
    assert f"{len(outputs[0]['instances'])} detections of ['tree']" in capsys.readouterr().out


def test_export_from_weights_alone(recorded_checkpoint):
    model, weights = one_class_checkpoint(recorded_checkpoint, "wtf_export_trees")
    sample = (torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(2)) * 255).round()
    torch.manual_seed(123)  # the model built from the weights starts from another initialisation
    traced, cfg = export_from_weights(weights, sample, opts=["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1 and cfg.MODEL.WEIGHTS == weights
    # The export settings are its defaults.
    assert (cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX, cfg.MODEL.AUTOFOCUS.CHIP_BATCH_SIZE) == (0.0, 1)
    assert traced.autofocus_settings["thing_classes"] == ["tree"]
    # The weights were loaded: the traced pass gives the saved model's detections and focus map.
    raw = model.pipeline.raw_score_thresh
    with torch.no_grad():
        boxes, scores, classes, focus = traced(sample)
        instances, eager_focus = model.detect(model.normalize([sample]), with_focus=True,
                                              raw_score_thresh=raw)
    torch.testing.assert_close(focus, eager_focus[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(boxes, instances[0].pred_boxes.tensor, atol=1e-3, rtol=1e-4)
    assert torch.equal(classes, instances[0].pred_classes)
    # An explicit config that contradicts the weights is an error naming the key.
    config = model_zoo.get_config_file("Synthetic/autofocus_compact_fpn.yaml")
    with pytest.raises(ModelMetadataError, match="MODEL.ROI_HEADS.NUM_CLASSES is 6 in the config but 1"):
        export_from_weights(weights, sample, opts=["MODEL.DEVICE", "cpu"], config_file=config)
    # An (H, W, C) array as read_image gives it, instead of the (C, H, W) tensor: a TypeError that
    # says how to convert it.
    with pytest.raises(TypeError, match=r"\(C, H, W\) torch.Tensor .* got ndarray of shape \(8, 9, 3\)"):
        export_from_weights(weights, np.zeros((8, 9, 3), np.uint8), opts=["MODEL.DEVICE", "cpu"])


def test_integers_are_accepted_for_float_autofocus_keys(tmp_path):
    from autofocus_d2.config import load_autofocus_config

    config = model_zoo.get_config_file("Synthetic/autofocus_compact_fpn.yaml")
    cfg = load_autofocus_config(config, ["MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX", "0",
                                         "MODEL.AUTOFOCUS.NMS_THRESH", 1])
    assert cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX == 0.0
    assert isinstance(cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX, float)
    assert isinstance(cfg.MODEL.AUTOFOCUS.NMS_THRESH, float)
    own = tmp_path / "own.yaml"
    own.write_text(f"_BASE_: {config}\nMODEL:\n  AUTOFOCUS:\n    BORDER_MARGIN: 4\n")
    assert load_autofocus_config(str(own)).MODEL.AUTOFOCUS.BORDER_MARGIN == 4.0
    with pytest.raises(ValueError, match="Type mismatch"):  # other types are still checked
        load_autofocus_config(config, ["MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX", "'a'"])
