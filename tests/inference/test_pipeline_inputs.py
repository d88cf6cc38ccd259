"""What the coarse-to-fine pipeline does with its inputs, with the model-free planted detector:
grayscale and RGBA images, bad shapes and channel counts, the input check
(``input_check.prepare_image``: dtypes, NaN / inf pixels, float images in [0, 1]), images smaller
than the minimum chip or very large ones, and scales no finer than the last on small images.

The planted objects and the helpers (``pipeline_cfg``, ``run``, ``boxes_by_class``) are those of
test_pipeline.py, which tests the policies, batching and merging.
"""
import logging

import pytest
import torch
from detectron2.structures import Boxes, Instances

from autofocus_d2.inference.input_check import prepare_image
from autofocus_d2.inference.pipeline import build_autofocus_pipeline
from tests.inference.test_pipeline import A, B, boxes_by_class, pipeline_cfg, run


def test_grayscale_and_rgba_inputs(planted_detector, paint_image):
    img = paint_image((800, 1200), [B])
    gray = img[1:2]
    out_gray = run(pipeline_cfg(), planted_detector(), [gray])[0]
    # A grayscale image becomes three identical channels: the object shows up in every channel.
    assert sorted(out_gray["instances"].pred_classes.tolist()) == [0, 1, 2]
    assert all(b == [600, 200, 616, 216] for b in boxes_by_class(out_gray["instances"]).values())
    rgba = torch.cat([img, torch.full((1, 800, 1200), 255.0)])
    out_rgba = run(pipeline_cfg(), planted_detector(), [rgba])[0]
    out_rgb = run(pipeline_cfg(), planted_detector(), [img])[0]
    assert boxes_by_class(out_rgba["instances"]) == boxes_by_class(out_rgb["instances"])


@pytest.mark.parametrize(
    "image, match",
    [
        (torch.zeros(800, 1200), r"\(C, H, W\)"),
        (torch.zeros(3, 0, 50), "empty"),
        (torch.zeros(5, 40, 50), "5 channels"),
    ],
)
def test_bad_images_are_rejected_with_a_clear_message(planted_detector, image, match):
    with pytest.raises(ValueError, match=match):
        run(pipeline_cfg(), planted_detector(), [image])


def test_image_smaller_than_the_minimum_chip(planted_detector, paint_image):
    img = paint_image((40, 50), [(1, 10, 12, 18, 20)])
    # Zooms 0.5, 1, 2: the 64 px minimum chip of scale 0 covers the whole 50 x 40 image.
    out = run(pipeline_cfg(SCALES=[[20, 25], [-1, -1], [80, -1]]), planted_detector(), [img])[0]
    assert out["autofocus"]["chip_boxes_per_scale"][1] == [[0, 0, 50, 40]]
    assert out["autofocus"]["skipped_scales"] == []
    assert boxes_by_class(out["instances"]) == {1: [10, 12, 18, 20]}


@pytest.mark.slow  # an image of many Mpix (about 2 s)
def test_very_large_image_has_bounded_batches_and_a_capped_chip_count(planted_detector, paint_image, caplog):
    # 8000 x 8000 with 9 separate small objects: the cap keeps 4 chips and says so; the whole
    # image at the finer scale would be 8000 px, but no forward pass exceeds MAX_CHIP_SIDE.
    objects = [(1, 400 + 2600 * i, 400 + 2600 * j, 424 + 2600 * i, 424 + 2600 * j)
               for i in range(3) for j in range(3)]
    img = paint_image((8000, 8000), objects)
    model = planted_detector()
    cfg = pipeline_cfg(SCALES=[[800, 800], [-1, -1]], MAX_CHIPS_PER_IMAGE=4,
                       MIN_CHIP_SIZE=[100.0], CHIP_BATCH_SIZE=2, MAX_CHIP_SIDE=1024)
    with caplog.at_level(logging.WARNING):
        out = run(cfg, model, [img])[0]
    assert out["autofocus"]["chips_per_scale"] == [1, 4]
    assert "keeping the 4" in caplog.text
    assert all(n <= 2 and max(h, w) <= 1024 for n, h, w in model.batches)
    assert out["autofocus"]["pyramid_pixels_per_scale"][1] >= 8000 * 8000


def test_all_focus_on_a_large_image_is_tiled_like_the_pyramid(planted_detector, paint_image):
    img = paint_image((3000, 2000), [A])
    cfg = pipeline_cfg(SCALES=[[400, 600], [-1, -1]], MAX_CHIP_SIDE=1024)
    out = run(cfg, planted_detector(focus_value=1.0), [img])[0]
    stats = out["autofocus"]
    assert stats["pixels_per_scale"] == stats["pyramid_pixels_per_scale"]
    assert stats["chips_per_scale"][1] > 1  # tiles


# ------------------------------------------------ the input check (input_check.prepare_image)

@pytest.mark.parametrize("dtype", [torch.uint16, torch.int16, torch.int32, torch.int64, torch.bool])
def test_dtypes_without_a_pixel_meaning_are_refused_naming_the_dtype(dtype):
    image = torch.zeros(3, 8, 8, dtype=dtype)
    with pytest.raises(ValueError, match=rf"input 2 \(a.png\): image dtype {dtype} cannot be interpreted.*"
                                         r"expects uint8 or a floating dtype with values in \[0, 255\]"):
        prepare_image(image, 3, 2, name="a.png")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_uint8_is_kept_and_float_images_become_float32_with_the_same_values(dtype):
    image = torch.tensor([0, 1, 128, 255]).reshape(1, 2, 2).to(dtype)
    out = prepare_image(image, 3, 0)
    assert out.dtype == (torch.uint8 if dtype == torch.uint8 else torch.float32) and out.shape == (3, 2, 2)
    assert out[0].flatten().tolist() == [0.0, 1.0, 128.0, 255.0]


@pytest.mark.parametrize("policy", ["single", "pyramid", "autofocus", "grid", "oracle"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_an_error_naming_the_input_for_every_policy(planted_detector, paint_image,
                                                                          policy, bad):
    image = paint_image((800, 1200), [A, B])
    image[1, 5, 7] = bad
    gt = Instances((800, 1200), gt_boxes=Boxes(torch.tensor([[600.0, 200.0, 616.0, 216.0]])))
    pipeline = build_autofocus_pipeline(pipeline_cfg(policy))
    good = {"image": paint_image((800, 1200), [A]), "instances": gt}
    with pytest.raises(ValueError, match=r"input 1 \(frame_7.png\): the image has NaN or inf pixels"):
        pipeline(planted_detector(), [good, {"image": image, "file_name": "frame_7.png", "instances": gt}])


def test_a_float_image_in_0_1_is_warned_about_once_per_pipeline(planted_detector, paint_image, caplog):
    pipeline = build_autofocus_pipeline(pipeline_cfg("single"))
    obj = (0, 10, 10, 40, 30)
    unit = paint_image((80, 120), [obj]) / 255.0
    with caplog.at_level(logging.WARNING, logger="autofocus_d2"):
        pipeline(planted_detector(), [{"image": unit}])
        pipeline(planted_detector(), [{"image": unit}, {"image": unit}])
        pipeline(planted_detector(), [{"image": paint_image((80, 120), [obj])}])
    warned = [r for r in caplog.records if "lies in [0, 1]" in r.getMessage()]
    assert len(warned) == 1 and "input 0" in warned[0].getMessage()
    # A new pipeline (a new run) warns again; uint8 and [0, 255] float images never do.
    other = build_autofocus_pipeline(pipeline_cfg("single"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autofocus_d2"):
        other(planted_detector(), [{"image": paint_image((80, 120), [obj]).to(torch.uint8)}])
        assert not [r for r in caplog.records if "lies in [0, 1]" in r.getMessage()]
        other(planted_detector(), [{"image": unit}])
    assert len([r for r in caplog.records if "lies in [0, 1]" in r.getMessage()]) == 1


# ------------------------------------------------ scales no finer than the last on small images
def test_a_scale_no_finer_on_a_small_image_is_skipped_counted_and_warned_once(planted_detector, paint_image, caplog):
    # The compact chain: a 480 x 640 image has zoom 1.067 at scale 0 and 1 at scale 1 (skipped);
    # a 1200 x 1600 image has zooms 0.48 and 1 (processed).
    cfg = pipeline_cfg("pyramid", SCALES=[[512, 768], [-1, -1]])
    pipeline = build_autofocus_pipeline(cfg)
    small, large = paint_image((480, 640), [A, B]), paint_image((1200, 1600), [A, B])
    with caplog.at_level(logging.WARNING, logger="autofocus_d2"):
        outs = pipeline(planted_detector(), [{"image": small}, {"image": large}])
        again = pipeline(planted_detector(), [{"image": small}])[0]
    assert outs[0]["autofocus"]["skipped_scales"] == [1] == again["autofocus"]["skipped_scales"]
    assert outs[0]["autofocus"]["chips_per_scale"] == [1, 0]
    assert outs[0]["autofocus"]["pyramid_pixels_per_scale"] == [512 * 683, 0]
    assert outs[1]["autofocus"]["skipped_scales"] == []
    assert outs[1]["autofocus"]["chips_per_scale"] == [1, 1]
    # Found at scale 0 only (zoom 1.067): within a pixel of the planted boxes.
    found = boxes_by_class(outs[0]["instances"])
    assert sorted(found) == [0, 1]
    assert torch.allclose(torch.tensor(found[0]), torch.tensor([100.0, 100, 400, 300]), atol=1)
    assert torch.allclose(torch.tensor(found[1]), torch.tensor([600.0, 200, 616, 216]), atol=1)
    warnings = [r.getMessage() for r in caplog.records if "no finer than" in r.getMessage()]
    assert len(warnings) == 1 and "480 x 640" in warnings[0] and "skipped_scales" in warnings[0]


def test_after_a_skipped_scale_the_next_finer_one_takes_chips_from_the_last_processed(planted_detector, paint_image):
    # 40 x 50 image: zooms 1 (scale 0), 1 (scale 1: skipped), 2 (scale 2: chips from scale 0's map).
    img = paint_image((40, 50), [(1, 10, 12, 18, 20)])
    out = run(pipeline_cfg(SCALES=[[40, 50], [-1, -1], [80, -1]]), planted_detector(), [img])[0]
    stats = out["autofocus"]
    assert stats["skipped_scales"] == [1]
    assert stats["chips_per_scale"] == [1, 0, 1]
    assert stats["chip_boxes_per_scale"][2] == [[0, 0, 50, 40]]
    assert stats["pixels_per_scale"] == [40 * 50, 0, 80 * 100]
    assert boxes_by_class(out["instances"]) == {1: [10, 12, 18, 20]}
