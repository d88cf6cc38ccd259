"""The SAHI rows of the benchmark (run_sahi through the public SAHI wrapper): same detector, same views,
slices mapped to the original frame, pixel accounting, per-pass timing records."""
import os

import numpy as np
import pytest

pytest.importorskip("sahi", reason="sahi is the optional [bench] extra (pip install -e .[bench])")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from autofocus_d2.benchmark.sahi_method import (  # noqa: E402
    parse_sahi_method,
    run_sahi,
    sahi_pixels,
    sahi_slice_boxes,
    sahi_slice_params,
)
from autofocus_d2.integrations.sahi import AutoFocusSahiModel, sahi_available  # noqa: E402
from autofocus_d2.structures import ScaleChain  # noqa: E402
from autofocus_d2.structures.views import View, zoomed_hw  # noqa: E402

H, W = 700, 900


@pytest.fixture(scope="module")
def compact(compact_cfg):
    cfg = compact_cfg()
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


@pytest.fixture(scope="module")
def bgr_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image[200:320, 300:480] = (40, 200, 90)  # some structure on the noise
    return image


def _rows(instances):
    """Detections as sorted rows (score, x0, y0, x1, y1, class): comparable whatever the order."""
    rows = torch.cat(
        [instances.scores[:, None], instances.pred_boxes.tensor, instances.pred_classes[:, None].float()], dim=1
    )
    return sorted(rows.tolist())


# ------------------------------------------------------------- (a) the same detector, exactly
@pytest.mark.slow
def test_one_slice_at_zoom_1_equals_the_models_single_pass(compact, bgr_image):
    cfg, model = compact
    assert model.input_format == "BGR"
    env_before = os.environ.get("CUDA_VISIBLE_DEVICES")
    sahi_model = AutoFocusSahiModel(cfg, model=model)
    assert sahi_model.detector is model  # the very module, not a copy of its weights
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == env_before  # no process-wide device change

    # SAHI's NMS (class-wise, IoU 0.5) after the detector's own class-wise NMS at 0.5 keeps all;
    # confidence = the detector's score threshold (which already dropped everything below it).
    kwargs = dict(
        slice_size=max(H, W), overlap=0.2, zoom=1.0, confidence=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        postprocess_type="NMS", postprocess_match_metric="IOU", postprocess_match_threshold=0.5,
    )
    out = run_sahi(sahi_model, bgr_image, image_format="BGR", **kwargs)
    with torch.no_grad():
        tensor = torch.as_tensor(np.ascontiguousarray(bgr_image.transpose(2, 0, 1)))
        expected = model.inference([{"image": tensor}])[0]["instances"]
    assert len(expected) > 0
    assert out.instances.image_size == (H, W)
    assert _rows(out.instances) == _rows(expected)  # exact: boxes, scores, classes
    assert (out.num_slices, out.pixels, out.slice_pixels, out.standard_pixels) == (1, H * W, H * W, 0)
    assert out.slice_boxes == [(0, 0, W, H)]

    # The same image given as RGB reaches the detector in the same (BGR) order ...
    rgb = run_sahi(sahi_model, np.ascontiguousarray(bgr_image[:, :, ::-1]), image_format="RGB", **kwargs)
    assert _rows(rgb.instances) == _rows(expected)
    # ... and the test would see a channel swap.
    swapped = run_sahi(sahi_model, bgr_image, image_format="RGB", **kwargs)
    assert _rows(swapped.instances) != _rows(expected)


@pytest.mark.slow
def test_a_zoomed_slice_is_the_pipelines_view_of_that_box(compact, bgr_image):
    cfg, model = compact
    zoom = 0.5
    out = run_sahi(
        AutoFocusSahiModel(model=model), bgr_image, slice_size=max(H, W), overlap=0.2, zoom=zoom, confidence=0.05, image_format="BGR",
        postprocess_type="NMS", postprocess_match_metric="IOU", postprocess_match_threshold=0.5,
    )
    view = View(0, 1, (0, 0, W, H), zoomed_hw((0, 0, W, H), zoom))
    pipeline = model.pipeline
    saved = pipeline.proposals_per_mpix, pipeline.raw_score_thresh
    # SAHI runs the plain detector (the RPN's own top-k, Detectron2's filtered output): compare with that.
    pipeline.proposals_per_mpix, pipeline.raw_score_thresh = 0.0, None
    try:
        with torch.no_grad():
            tensor = torch.as_tensor(np.ascontiguousarray(bgr_image.transpose(2, 0, 1))).float()
            (expected,), _ = pipeline.run_views(model, [tensor], [view], with_focus=False)
    finally:
        pipeline.proposals_per_mpix, pipeline.raw_score_thresh = saved
    assert out.pixels == view.pixels == 350 * 450
    ours, theirs = torch.tensor(_rows(out.instances)), torch.tensor(_rows(expected))
    assert ours.shape == theirs.shape and len(ours) > 0
    # Same detections; boxes differ only by float rounding (x * (w/w') vs x / (w'/w)).
    assert torch.allclose(ours, theirs, atol=1e-3)


@pytest.mark.slow
def test_built_from_cfg_and_a_checkpoint_it_is_the_same_detector(compact, bgr_image, tmp_path):
    cfg, model = compact
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        AutoFocusSahiModel(cfg)
    path = str(tmp_path / "model.pth")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    kwargs = dict(slice_size=max(H, W), overlap=0.2, zoom=0.5, confidence=0.05, image_format="BGR")
    loaded = run_sahi(AutoFocusSahiModel(cfg, model_path=path), bgr_image, **kwargs)
    live = run_sahi(AutoFocusSahiModel(cfg, model=model), bgr_image, **kwargs)
    assert len(live.instances) > 0
    assert _rows(loaded.instances) == _rows(live.instances)


# ------------------------------------------------------------- (b) slices -> original frame
# Original-frame objects of a 700 x 900 RGB image, one per colour (= class). With 400 px slices and
# overlap 0.2 the slices start at x 0, 320, 500 and y 0, 300: red lies whole in two slices, green is
# cut by x = 400 and blue by x = 720 and y = 400 (its parts appear in four slices).
PLANTED = {0: (610, 450, 650, 490), 1: (380, 100, 420, 140), 2: (700, 250, 760, 330)}


def planted_rgb():
    image = np.zeros((H, W, 3), dtype=np.uint8)
    for cls, (x0, y0, x1, y1) in PLANTED.items():
        image[y0:y1, x0:x1, cls] = 255
    return image


def planted_sahi_model(detector):
    return AutoFocusSahiModel(model=detector, first_scale=(512, 768), category_mapping={"0": "r", "1": "g", "2": "b"})


def _by_class(instances):
    order = torch.argsort(instances.pred_classes)
    return instances.pred_classes[order].tolist(), instances.pred_boxes.tensor[order]


@pytest.mark.parametrize("zoom", [2.0, 1.0])
def test_slice_detections_land_on_the_objects_in_the_original_frame(planted_detector, zoom):
    # The shared stand-in (BGR input): each colour channel one class, scored by its box's area.
    detector = planted_detector(score_by_area=True, input_format="BGR")
    sahi_model = planted_sahi_model(detector)
    # SAHI's default merge (GREEDYNMM, IOS 0.5) joins each object's cut parts to the whole.
    out = run_sahi(sahi_model, planted_rgb(), slice_size=400, overlap=0.2, zoom=zoom, confidence=0.3,
                   image_format="RGB", perform_standard_pred=False)
    classes, boxes = _by_class(out.instances)
    assert classes == [0, 1, 2]
    expected = torch.tensor([PLANTED[c] for c in classes], dtype=torch.float32)
    # Exact: a hard edge upsampled 2x by bilinear interpolation crosses 127.5 exactly at the edge.
    assert torch.equal(boxes, expected), boxes
    assert detector.inputs == [zoomed_hw(b, zoom) for b in out.slice_boxes]


def test_the_standard_prediction_runs_on_the_whole_image_at_the_first_scale(planted_detector):
    detector = planted_detector(score_by_area=True, input_format="BGR")
    sahi_model = planted_sahi_model(detector)
    out = run_sahi(sahi_model, planted_rgb(), slice_size=400, overlap=0.2, zoom=2.0, confidence=0.3, image_format="RGB")
    assert [p.scale for p in out.passes] == [1] * out.num_slices + [0]  # slices, then the whole image
    assert [p.pixels for p in out.passes] == [h * w for h, w in detector.inputs]
    assert all(p.seconds >= 0 for p in out.passes)
    assert detector.inputs[-1] == ScaleChain(scales=[[512, 768]]).image_hw((H, W), 0) == (512, 658)
    assert out.standard_pixels == 512 * 658
    classes, boxes = _by_class(out.instances)
    assert classes == [0, 1, 2]
    # Merged with the (downscaled, hence approximate) whole-image box: within about a pixel.
    expected = torch.tensor([PLANTED[c] for c in classes], dtype=torch.float32)
    assert (boxes - expected).abs().max() <= 2.0, boxes


# ------------------------------------------------------------- (c) slices and pixels
def test_slice_count_and_pixel_accounting_of_a_known_size(planted_detector):
    # 700 x 900, 400 px slices, overlap int(0.2 * 400) = 80: x starts 0, 320, then the last slice is
    # shifted in to end at 900 (500); y starts 0, then 300 (ends at 700).
    slices = [(0, 0, 400, 400), (320, 0, 720, 400), (500, 0, 900, 400),
              (0, 300, 400, 700), (320, 300, 720, 700), (500, 300, 900, 700)]
    assert sahi_slice_boxes((H, W), 400, 0.2) == slices

    detector = planted_detector(score_by_area=True, input_format="BGR")
    sahi_model = planted_sahi_model(detector)
    image = planted_rgb()
    for zoom, standard, expected_slice, expected_standard in [
        (0.75, True, 6 * 300 * 300, 512 * 658),
        (2.0, False, 6 * 800 * 800, 0),
    ]:
        detector.inputs.clear()
        out = run_sahi(sahi_model, image, slice_size=400, overlap=0.2, zoom=zoom, confidence=0.3,
                       image_format="RGB", perform_standard_pred=standard)
        assert out.num_slices == 6 and out.slice_boxes == slices
        assert (out.slice_pixels, out.standard_pixels) == (expected_slice, expected_standard)
        assert out.pixels == expected_slice + expected_standard == sum(h * w for h, w in detector.inputs)
        assert sahi_pixels((H, W), slice_size=400, overlap=0.2, zoom=zoom, first_scale=(512, 768),
                           perform_standard_pred=standard) == (expected_slice, expected_standard, 6)

    # One slice covering the image: SAHI skips its standard prediction, so it is not counted.
    out = run_sahi(sahi_model, image, slice_size=1000, overlap=0.2, zoom=1.0, confidence=0.3, image_format="RGB")
    assert (out.num_slices, out.pixels, out.standard_pixels) == (1, H * W, 0)


def test_slice_params_match_the_finest_scales_smallest_chip(compact_cfg):
    cfg = compact_cfg()
    cfg.MODEL.AUTOFOCUS.SCALES = [[512, 768], [-1, -1]]
    cfg.MODEL.AUTOFOCUS.MIN_CHIP_SIZE = [128.0]  # px of scale 0
    # Scale 0 of a 1500 x 1500 image is 512 x 512 (zoom 512 / 1500): 128 px there = 375 px here.
    assert sahi_slice_params(cfg, (1500, 1500)) == (375, 0.2, 1.0)

    # The paper's chain on a 480 x 640 image: zooms 0.8, 1.667, 2.917; the smallest chip of the
    # finest scale is 320 px of scale 1, i.e. 192 original px, seen at zoom 1400 / 480.
    cfg.MODEL.AUTOFOCUS.SCALES = [[480, 512], [800, 1280], [1400, 2000]]
    cfg.MODEL.AUTOFOCUS.MIN_CHIP_SIZE = [256.0, 320.0]
    cfg.MODEL.AUTOFOCUS.GRID_OVERLAP = 0.25
    size, overlap, zoom = sahi_slice_params(cfg, (480, 640))
    assert (size, overlap) == (192, 0.25) and zoom == pytest.approx(1400 / 480)
    # On a 427 x 640 image scale 1 zooms by 800 / 427: 320 px there are 171 original px.
    assert sahi_slice_params(cfg, (427, 640))[0] == 171

    cfg.MODEL.AUTOFOCUS.SCALES = [[512, 768]]
    with pytest.raises(ValueError, match="one scale"):
        sahi_slice_params(cfg, (480, 640))


def test_sahi_method_names():
    assert parse_sahi_method("sahi") is None
    assert parse_sahi_method("sahi@512") == 512
    for bad in ("sahi@", "sahi@0", "sahi@x", "sahi512", "tta"):
        with pytest.raises(ValueError, match="not a SAHI method"):
            parse_sahi_method(bad)
