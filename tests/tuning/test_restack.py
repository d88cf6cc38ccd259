"""Offline re-stacking (autofocus_d2.tuning.restack) against the pipeline itself."""
import torch

from autofocus_d2.inference.chip_policies import AutoFocusChipPolicy, PyramidChipPolicy
from autofocus_d2.inference.pipeline import CoarseToFinePipeline
from autofocus_d2.structures.scale_chain import ScaleChain
from autofocus_d2.structures.views import View
from autofocus_d2.tuning import collect_image, crop_focus_map, restack_image, restack_views

# (channel, x0, y0, x1, y1) in original pixels: channel 0 a large object, 1 and 2 small ones that
# the planted detector's FocusPixel map marks.
OBJECTS = [(0, 40, 40, 360, 300), (1, 700, 500, 724, 520), (2, 1000, 180, 1016, 204)]
IMAGE_HW = (640, 1280)


def _pipeline(policy, scales=((320, 640), (-1, -1)), small_drop_size=0.0):
    return CoarseToFinePipeline(
        policy=policy, scale_chain=ScaleChain(scales=[list(s) for s in scales]), chip_batch_size=4,
        max_chip_side=2048, tile_overlap=128, border_margin=4.0, small_drop_size=small_drop_size,
        valid_ranges=[(-1, -1)] * len(scales), nms_method="soft_nms", nms_thresh=0.5, soft_nms_sigma=0.5,
        detections_per_image=100)


def _policy(n=1):
    return AutoFocusChipPolicy(thresholds=[0.5] * n, dilations=[1] * n, min_sizes=[64.0] * n, max_chips=8)


def _sorted(inst):
    order = torch.argsort(inst.pred_classes * 1e6 + inst.pred_boxes.tensor[:, 0])
    return inst.pred_boxes.tensor[order], inst.scores[order], inst.pred_classes[order]


def test_stored_views_of_a_run_restack_to_its_detections(planted_detector, paint_image):
    """restack_views over the views and per-view detections of a pipeline run gives exactly the
    run's detections (the pipeline's own stacking, same inputs)."""
    image = paint_image(IMAGE_HW, OBJECTS)
    for small_drop in (0.0, 64.0):
        pipeline = _pipeline(_policy(), small_drop_size=small_drop)
        out = pipeline(planted_detector(), [{"image": image}], with_details=True)[0]
        d = out["autofocus_details"]
        assert len(d["views_per_scale"][1]) >= 1  # chips were made, so scale 1 is exercised
        again = restack_views(pipeline, IMAGE_HW, d["views_per_scale"], d["detections_per_scale"])
        for a, b in zip(_sorted(again), _sorted(out["instances"])):
            assert torch.equal(a, b)


def test_restack_predicts_the_pipeline_chips_and_detections(planted_detector, paint_image):
    """From one pass per scale over the whole image, re-stacking a chip setting finds the chips the
    pipeline finds (same scale-0 maps) and the same objects, boxes within a pixel."""
    image = paint_image(IMAGE_HW, OBJECTS)
    pipeline = _pipeline(_policy())
    stored = collect_image(planted_detector(), pipeline, image)
    assert [len(v) for v in stored.views_per_scale] == [1, 1]
    assert stored.maps_per_scale[1] == [None] and stored.maps_per_scale[0][0] is not None
    predicted, stats = restack_image(stored, pipeline, _policy())
    real = pipeline(planted_detector(), [{"image": image}], with_details=True)[0]
    real_chips = [list(v.box) for v in real["autofocus_details"]["views_per_scale"][1]]
    assert stats["pixels_per_scale"] == real["autofocus"]["pixels_per_scale"]
    assert stats["chips_per_scale"][1] == len(real_chips) >= 1
    pb, ps, pc = _sorted(predicted)
    rb, rs, rc = _sorted(real["instances"])
    assert torch.equal(pc, rc) and set(pc.tolist()) == {0, 1, 2}
    assert torch.allclose(pb, rb, atol=1.0)
    assert stats["pyramid_pixels"] == sum(real["autofocus"]["pyramid_pixels_per_scale"])


def test_pyramid_restack_equals_the_pyramid_run(planted_detector, paint_image):
    image = paint_image(IMAGE_HW, OBJECTS)
    pipeline = _pipeline(PyramidChipPolicy())
    stored = collect_image(planted_detector(), pipeline, image)
    predicted, stats = restack_image(stored, pipeline, PyramidChipPolicy())
    real = pipeline(planted_detector(), [{"image": image}])[0]
    for a, b in zip(_sorted(predicted), _sorted(real["instances"])):
        assert torch.equal(a, b)
    assert stats["pixels_per_scale"] == real["autofocus"]["pixels_per_scale"]


def test_three_scale_chain_reads_chip_maps_from_the_whole_image_map(planted_detector, paint_image):
    """Scale-2 chips come from scale-1 chip maps cut out of scale 1's whole-image map: the small
    objects reach scale 2, and every scale-2 chip lies inside a scale-1 chip."""
    image = paint_image(IMAGE_HW, OBJECTS)
    pipeline = _pipeline(_policy(2), scales=((160, 320), (320, 640), (-1, -1)))
    stored = collect_image(planted_detector(), pipeline, image)
    predicted, stats = restack_image(stored, pipeline, _policy(2))
    assert stats["chips_per_scale"][1] >= 1 and stats["chips_per_scale"][2] >= 1
    assert set(predicted.pred_classes.tolist()) == {0, 1, 2}
    assert sum(stats["pixels_per_scale"]) < stats["pyramid_pixels"]
    real = pipeline(planted_detector(), [{"image": image}])[0]["autofocus"]
    assert stats["chips_per_scale"] == real["chips_per_scale"]
    assert stats["pixels_per_scale"][:2] == real["pixels_per_scale"][:2]


def test_crop_focus_map_takes_the_cells_under_the_view():
    stride = 16
    whole = View(0, 1, (0, 0, 640, 320), (320, 640))  # zoom 1
    source = torch.arange(20 * 40, dtype=torch.float32).reshape(20, 40)
    chip = View(0, 1, (64, 32, 192, 128), (96, 128))  # cell-aligned: rows 2..7, cols 4..11
    assert torch.equal(crop_focus_map(source, whole, chip, stride), source[2:8, 4:12])
    # A chip at another zoom reads the source cell under each of its cell centres.
    half = View(0, 1, (0, 0, 320, 160), (320, 640))  # source at zoom 2: 20 x 40 cells
    chip2 = View(0, 1, (32, 16, 96, 64), (96, 128))  # zoom 2, cell-aligned in the source grid
    assert torch.equal(crop_focus_map(source, half, chip2, stride), source[2:8, 4:12])
