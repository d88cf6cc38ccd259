"""The coarse-to-fine pipeline with a model-free planted detector (tests/stand_in_detectors.py):
what each chip policy processes and finds, batching, the details output, the paper's merge of raw
view detections, the oracle policy, and inference precision (bfloat16 / float16).

The pipeline's inputs (bad images, dtypes, non-finite and [0, 1] pixels, very small and very large
images, scales no finer on small images) are tested in test_pipeline_inputs.py, which imports the
planted objects ``A``, ``B``, ``C`` and the helpers ``pipeline_cfg``, ``run``, ``boxes_by_class`` of
this module.
"""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Instances

from autofocus_d2 import add_autofocus_config
from autofocus_d2.inference.pipeline import build_autofocus_pipeline
from autofocus_d2.structures import ScaleChain


A = (0, 100, 100, 400, 300)  # channel 0: large object, not a FocusPixel
B = (1, 600, 200, 616, 216)  # channel 1: 16 px
C = (2, 900, 600, 908, 608)  # channel 2: 8 px


def pipeline_cfg(policy="autofocus", **overrides):
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    af.CHIP_POLICY = policy
    # On the 800 x 1200 test image: zooms 0.5, 1 (original resolution) and 2.
    af.SCALES = [[400, 600], [-1, -1], [1600, -1]]
    af.FOCUS_THRESHOLD = [0.5]
    af.DILATION = [1]
    af.MIN_CHIP_SIZE = [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * 3
    af.SMALL_DROP_SIZE = 64.0
    af.GRID_TILE_SIZE = 256
    af.MAX_CHIP_SIDE = 4096  # no tiling unless a test asks for it
    for key, value in overrides.items():
        setattr(af, key, value)
    if "VALID_RANGES" not in overrides:  # one range per scale
        af.VALID_RANGES = [[-1.0, -1.0]] * len(af.SCALES)
    return cfg


def run(cfg, model, images, **extra):
    pipeline = build_autofocus_pipeline(cfg)
    inputs = [{"image": img, **extra} for img in images]
    with torch.no_grad():
        return pipeline(model, inputs)


def boxes_by_class(instances):
    return {int(c): b.tolist() for c, b in zip(instances.pred_classes, instances.pred_boxes.tensor)}


def test_planted_objects_come_back_to_the_original_frame_across_two_zooms(planted_detector, paint_image):
    model = planted_detector()
    out = run(pipeline_cfg(), model, [paint_image((800, 1200), [A, B, C])])[0]
    found = boxes_by_class(out["instances"])
    assert found == {0: [100, 100, 400, 300], 1: [600, 200, 616, 216], 2: [900, 600, 908, 608]}
    stats = out["autofocus"]
    assert stats["chips_per_scale"] == [1, 2, 2]
    # Scale-0 FocusChips: the 64 px (scale 0) minimum around the focus cells (B spans two cell
    # columns at scale 0: x in [300, 308) crosses 304), in original pixels.
    assert stats["chip_boxes_per_scale"][1] == [[544, 144, 672, 272], [848, 528, 976, 656]]
    assert stats["pixels_per_scale"][0] == 400 * 600
    assert stats["pixels_per_scale"][1] == 2 * 128 * 128
    assert stats["pyramid_pixels_per_scale"] == [400 * 600, 800 * 1200, 1600 * 2400]


def test_small_coarse_detections_inside_finer_chips_are_replaced_not_duplicated(planted_detector, paint_image):
    model = planted_detector()
    out = run(pipeline_cfg(NMS_THRESH=0.99), model, [paint_image((800, 1200), [A, B, C])])[0]
    # Without the small-and-covered rule, B and C would come back from up to three scales; the
    # NMS threshold of 0.99 would not merge the slightly different coarse copies.
    assert sorted(out["instances"].pred_classes.tolist()) == [0, 1, 2]


def test_output_is_scaled_to_the_requested_height_and_width(planted_detector, paint_image):
    model = planted_detector()
    out = run(pipeline_cfg(), model, [paint_image((800, 1200), [A, B, C])], height=400, width=600)[0]
    assert out["instances"].image_size == (400, 600)
    assert boxes_by_class(out["instances"])[0] == [50, 50, 200, 150]


def test_batched_inputs_give_the_same_result_as_one_by_one(planted_detector, paint_image):
    img1 = paint_image((800, 1200), [A, B, C])
    img2 = paint_image((700, 900), [(1, 50, 60, 74, 84), (0, 300, 300, 600, 500)])
    model = planted_detector()
    both = run(pipeline_cfg(CHIP_BATCH_SIZE=3), model, [img1, img2])
    alone = [run(pipeline_cfg(), planted_detector(), [img])[0] for img in (img1, img2)]
    for b, a in zip(both, alone):
        assert boxes_by_class(b["instances"]) == boxes_by_class(a["instances"])
        assert b["autofocus"] == a["autofocus"]
    assert max(batch[0] for batch in model.batches) <= 3


def test_pyramid_processes_exactly_the_pyramid_pixels(planted_detector, paint_image):
    out = run(pipeline_cfg("pyramid"), planted_detector(), [paint_image((750, 1130), [A])])[0]
    # The paper's rule per image: scale 0 is 400 x 603 capped to a 600 px longer side (zoom
    # 600 / 1130), scale 2 a 1600 px shorter side (zoom 1600 / 750).
    assert ScaleChain(scales=[[400, 600], [-1, -1], [1600, -1]]).zooms((750, 1130)) == [600 / 1130, 1.0, 1600 / 750]
    expected = [398 * 600, 750 * 1130, 1600 * 2411]
    assert out["autofocus"]["pixels_per_scale"] == expected
    assert out["autofocus"]["pyramid_pixels_per_scale"] == expected
    assert out["autofocus"]["chips_per_scale"] == [1, 1, 1]


def test_single_processes_only_the_first_scale(planted_detector, paint_image):
    out = run(pipeline_cfg("single"), planted_detector(), [paint_image((800, 1200), [A, B])])[0]
    assert out["autofocus"]["pixels_per_scale"] == [400 * 600]
    assert boxes_by_class(out["instances"])[0] == [100, 100, 400, 300]


def test_grid_tiles_cover_the_image_with_overlap(planted_detector, paint_image):
    out = run(pipeline_cfg("grid", SCALES=[[400, 600], [-1, -1]]), planted_detector(), [paint_image((800, 1200), [A, B])])[0]
    tiles = torch.tensor(out["autofocus"]["chip_boxes_per_scale"][1], dtype=torch.float32)
    assert len(tiles) == 4 * 6  # 256 px tiles with 20% overlap over 800 x 1200
    assert tiles[:, 0].min() == 0 and tiles[:, 1].min() == 0
    assert tiles[:, 2].max() == 1200 and tiles[:, 3].max() == 800
    assert ((tiles[:, 2] - tiles[:, 0]) == 256).all()
    assert boxes_by_class(out["instances"])[1] == [600, 200, 616, 216]


def test_no_focus_above_threshold_gives_no_chips_and_the_coarse_detections(planted_detector, paint_image):
    img = paint_image((800, 1200), [A, B])
    out = run(pipeline_cfg(), planted_detector(focus_value=0.1), [img])[0]
    single = run(pipeline_cfg("single"), planted_detector(), [img])[0]
    assert out["autofocus"]["chips_per_scale"] == [1, 0, 0]
    assert boxes_by_class(out["instances"]) == boxes_by_class(single["instances"])
    assert torch.equal(out["instances"].scores, single["instances"].scores)


def test_all_focus_merges_to_the_whole_image_and_never_exceeds_the_pyramid(planted_detector, paint_image):
    img = paint_image((800, 1200), [A, B, C])
    out = run(pipeline_cfg(), planted_detector(focus_value=1.0), [img])[0]
    stats = out["autofocus"]
    assert stats["chip_boxes_per_scale"][1] == [[0, 0, 1200, 800]]
    assert stats["pixels_per_scale"] == stats["pyramid_pixels_per_scale"]


def test_nan_focus_map_is_an_error_naming_the_cause(planted_detector, paint_image):
    with pytest.raises(ValueError, match="FocusPixel map of image 0 at scale 0.*NaN"):
        run(pipeline_cfg(), planted_detector(focus_value=float("nan")), [paint_image((300, 400), [A])])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_planted_objects_on_cuda(planted_detector, paint_image):
    model = planted_detector().to("cuda")
    out = run(pipeline_cfg(), model, [paint_image((800, 1200), [A, B, C]).cuda()])[0]
    assert out["instances"].pred_boxes.tensor.device.type == "cuda"
    assert boxes_by_class(out["instances"]) == {
        0: [100, 100, 400, 300], 1: [600, 200, 616, 216], 2: [900, 600, 908, 608]}


def test_details_expose_views_and_focus_maps_per_scale(planted_detector, paint_image):
    pipeline = build_autofocus_pipeline(pipeline_cfg())
    with torch.no_grad():
        out = pipeline(planted_detector(), [{"image": paint_image((800, 1200), [A, B, C])}], with_details=True)[0]
    details = out["autofocus_details"]
    assert [len(v) for v in details["views_per_scale"]] == out["autofocus"]["chips_per_scale"]
    maps0 = details["focus_maps_per_scale"][0]
    assert maps0[0].shape == (416 // 16, 608 // 16)  # padded to the size divisibility of 32
    assert maps0[0].sum().item() == 3  # B spans two cells, C one
    assert details["focus_maps_per_scale"][2] == [None, None]  # the last scale predicts no chips


class RawPlantedDetector:
    """The planted detector plus the raw-detection switch of AutoFocusRCNN.detect: records the
    ``raw_score_thresh`` it gets and, when given one, also returns a low-score copy of every
    detection (score 0.0005, below the paper's 0.001, as the model's own threshold would drop)."""

    def __init__(self, planted_detector):
        self.inner = planted_detector()
        self.device, self.input_channels = self.inner.device, self.inner.input_channels
        self.focus_stride, self.normalize = self.inner.focus_stride, self.inner.normalize
        self.size_divisibility = self.inner.size_divisibility
        self.raw_calls = []

    def detect(self, images, with_focus=True, raw_score_thresh=None):
        self.raw_calls.append(raw_score_thresh)
        results, focus = self.inner.detect(images, with_focus)
        if raw_score_thresh is not None:
            for inst in results:
                low = inst[inst.scores >= 0]
                low.scores = torch.full_like(low.scores, 0.0005)
                both = Instances.cat([inst, low])
                results[results.index(inst)] = both[both.scores >= raw_score_thresh]
        return results, focus


def test_papers_merge_soft_nms_over_raw_views(planted_detector, paint_image):
    # The pyramid at two scales finds A twice, at the same original-frame box (IoU 1): Soft-NMS
    # keeps the first at 0.9 and decays the second to 0.9 * exp(-1 / 0.55); class-wise NMS keeps one.
    image = paint_image((800, 1200), [A])
    scales = [[400, 600], [-1, -1]]
    raw = RawPlantedDetector(planted_detector)
    cfg = pipeline_cfg("pyramid", SCALES=scales, VIEW_DETECTIONS="raw", RAW_SCORE_THRESH=0.001,
                       NMS_METHOD="soft_nms", SOFT_NMS_SIGMA=0.55)
    out = run(cfg, raw, [image])[0]["instances"]
    assert raw.raw_calls == [0.001, 0.001]
    assert out.pred_classes.tolist() == [0, 0]
    assert out.scores.tolist() == pytest.approx([0.9, 0.9 * math.exp(-1 / 0.55)], rel=1e-6)
    assert out.pred_boxes.tensor.tolist() == [[100, 100, 400, 300]] * 2

    filtered = RawPlantedDetector(planted_detector)
    out = run(pipeline_cfg("pyramid", SCALES=scales), filtered, [image])[0]["instances"]
    assert filtered.raw_calls == [None, None]
    assert out.scores.tolist() == pytest.approx([0.9])


def test_chips_of_different_shapes_are_not_padded_into_one_batch(planted_detector, paint_image):
    # Two focus objects far apart, one wide (channel 1) and one tall (channel 2): at zoom 1 their
    # FocusChips are 272 x 64 and 64 x 272 (rounded to the grid); padded together they would cost
    # a 288 x 288 square each.
    wide, tall = (1, 100, 100, 360, 108), (2, 800, 300, 808, 560)
    image = paint_image((800, 1200), [wide, tall])
    cfg = pipeline_cfg(SCALES=[[400, 600], [-1, -1]], MIN_CHIP_SIZE=[16.0], SMALL_DROP_SIZE=0.0)
    plain = planted_detector()
    run(pipeline_cfg(SCALES=[[400, 600], [-1, -1]], MIN_CHIP_SIZE=[16.0], MAX_BATCH_PADDING=1e9), plain, [image])
    assert plain.batches[1][0] == 2  # plain batching: both chips in one square batch
    grouped = planted_detector()
    out = run(cfg, grouped, [image])[0]
    assert out["autofocus"]["chips_per_scale"] == [1, 2]
    assert [b[0] for b in grouped.batches[1:]] == [1, 1]  # each chip padded only to its own shape
    padded = sum(n * h * w for n, h, w in grouped.batches[1:])
    assert padded < 0.5 * plain.batches[1][0] * plain.batches[1][1] * plain.batches[1][2]
    # Same detections either way (the planted detector sees each chip's own pixels).
    assert boxes_by_class(out["instances"]) == {1: [100, 100, 360, 108], 2: [800, 300, 808, 560]}


def test_oracle_policy_reads_the_inputs_ground_truth(planted_detector, paint_image):
    from detectron2.structures import Boxes

    # Focus maps of the planted detector would mark B and C; the oracle uses the ground truth
    # instead: only B is given (in a half-size frame, as a mapper's resized annotations).
    image = paint_image((800, 1200), [A, B, C])
    gt = Instances((400, 600))
    gt.gt_boxes = Boxes(torch.tensor([[300.0, 100.0, 308.0, 108.0]]))
    gt.gt_classes = torch.tensor([1])
    cfg = pipeline_cfg("oracle", SCALES=[[400, 600], [-1, -1]])
    out = run(cfg, planted_detector(), [image], instances=gt)[0]
    chips = out["autofocus"]["chip_boxes_per_scale"][1]
    assert len(chips) == 1
    x0, y0, x1, y1 = chips[0]
    assert x0 <= 600 and y0 <= 200 and x1 >= 616 and y1 >= 216  # B, in the original frame
    assert not (x0 <= 900 and x1 >= 908 and y0 <= 600 and y1 >= 608)  # not C
    with pytest.raises(ValueError, match="ground truth"):
        run(cfg, planted_detector(), [image])


def test_bfloat16_inference_agrees_with_float32(compact_cfg):
    """The compact model, random weights, on CPU: the detector passes under bfloat16 autocast."""
    from detectron2.modeling import build_model
    from autofocus_d2.inference.precision import inference_autocast

    cfg = compact_cfg(VIEW_DETECTIONS="filtered")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(1)
    image = (torch.rand(3, 400, 560) * 255).round()
    pipeline = build_autofocus_pipeline(cfg)
    images = model.normalize([image])
    with torch.no_grad():
        _, ref_focus = model.detect(images)
        with inference_autocast(model.device, "bfloat16"):
            _, focus = model.detect(images)
        full = pipeline(model, [{"image": image}])[0]
    # FocusPixel probabilities within 0.05, 0.01 on average (bfloat16 has an 8-bit mantissa).
    diff = (focus.float() - ref_focus).abs()
    assert diff.max() < 0.05 and diff.mean() < 0.01, (diff.max(), diff.mean())
    # Backbone features within 2% (relative L2) on every level. (Detections of random weights
    # are near-ties, so their order is no test of precision.)
    with torch.no_grad():
        ref_feats = model.backbone(images.tensor)
        with inference_autocast(model.device, "bfloat16"):
            feats = model.backbone(images.tensor)
    for name, ref_f in ref_feats.items():
        rel = (feats[name].float() - ref_f).norm() / ref_f.norm()
        assert rel < 0.02, (name, rel)
    # Through the pipeline the outputs come back as float32.
    cfg.MODEL.AUTOFOCUS.INFERENCE_DTYPE = "bfloat16"
    with torch.no_grad():
        out = build_autofocus_pipeline(cfg)(model, [{"image": image}])[0]["instances"]
    assert out.pred_boxes.tensor.dtype == torch.float32 and out.scores.dtype == torch.float32
    assert len(out) > 0 and len(full["instances"]) > 0
    with pytest.raises(ValueError, match="needs CUDA"):
        cfg.MODEL.AUTOFOCUS.INFERENCE_DTYPE = "float16"
        build_autofocus_pipeline(cfg)(model, [{"image": image}])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cuda_agrees_with_float32(compact_cfg, dtype):
    from detectron2.modeling import build_model

    cfg = compact_cfg()
    cfg.MODEL.DEVICE = "cuda"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = (torch.rand(3, 400, 560, generator=torch.Generator().manual_seed(1)) * 255).round().cuda()
    with torch.no_grad():
        ref = build_autofocus_pipeline(cfg)(model, [{"image": image}])[0]
        cfg.MODEL.AUTOFOCUS.INFERENCE_DTYPE = dtype
        out = build_autofocus_pipeline(cfg)(model, [{"image": image}])[0]
    assert out["instances"].pred_boxes.tensor.dtype == torch.float32
    assert out["autofocus"]["chips_per_scale"][0] == ref["autofocus"]["chips_per_scale"][0]


def test_each_image_zooms_are_computed_once_per_call(planted_detector, paint_image, monkeypatch):
    calls = []
    original = ScaleChain.zooms

    def counting(self, image_hw):
        calls.append(tuple(image_hw))
        return original(self, image_hw)

    model = planted_detector()
    images = [paint_image((800, 1200), [A, B, C]), paint_image((600, 900), [B])]
    cfg = pipeline_cfg()
    pipeline = build_autofocus_pipeline(cfg)
    monkeypatch.setattr(ScaleChain, "zooms", counting)
    with torch.no_grad():
        outs = pipeline(model, [{"image": img} for img in images])
    assert sorted(calls) == [(600, 900), (800, 1200)]
    # the stats' pyramid (computed from those zooms) is what pyramid_pixels gives on its own
    monkeypatch.setattr(ScaleChain, "zooms", original)
    for out, img in zip(outs, images):
        assert out["autofocus"]["pyramid_pixels_per_scale"] == pipeline.pyramid_pixels(tuple(img.shape[-2:]))
