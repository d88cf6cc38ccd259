"""Per-instance fields other than boxes (masks, keypoints) through views, chips and focus stacking,
with the planted stand-in detector of tests/stand_in_detectors.py."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Boxes, Instances

from autofocus_d2 import add_autofocus_config
from autofocus_d2.inference.pipeline import build_autofocus_pipeline
from autofocus_d2.structures.views import View, instances_to_original

A = (0, 100, 100, 400, 300)  # channel 0: 300 x 200 px, found at scale 0 (zoom 0.5)
B = (1, 600, 200, 616, 216)  # channel 1: 16 px, found in a scale-2 chip (zoom 2)
C = (2, 900, 600, 908, 608)  # channel 2: 8 px, found in a scale-2 chip (zoom 2)


def fields_cfg(**overrides):
    cfg = get_cfg()
    add_autofocus_config(cfg)
    af = cfg.MODEL.AUTOFOCUS
    # On the 800 x 1200 test image: zooms 0.5, 1 and 2 (as tests/inference/test_pipeline.py).
    af.SCALES = [[400, 600], [-1, -1], [1600, -1]]
    af.FOCUS_THRESHOLD = [0.5]
    af.DILATION = [1]
    af.MIN_CHIP_SIZE = [64.0]
    af.VALID_RANGES = [[-1.0, -1.0]] * 3
    af.SMALL_DROP_SIZE = 64.0
    af.MAX_CHIP_SIDE = 4096
    for key, value in overrides.items():
        setattr(af, key, value)
    return cfg


def run(cfg, model, image, with_details=False, **extra):
    with torch.no_grad():
        return build_autofocus_pipeline(cfg)(model, [{"image": image, **extra}], with_details=with_details)[0]


def by_class(instances, field):
    return {int(c): v for c, v in zip(instances.pred_classes, instances.get(field))}


def left_half_mask(hw, box):
    """The bool (H, W) left half of ``box``."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(hw, dtype=torch.bool)
    mask[y0:y1, x0 : (x0 + x1) // 2] = True
    return mask


def pasted_mask(hw, box):
    """The planted detector's 8 x 8 mask (left half 1) pasted on ``box`` of an (H, W) image by
    Detectron2, as a detector that saw the whole image at once would output it; its bilinear paste
    loses a few pixels at the corners of large boxes (IoU >= 0.98 with the left half here)."""
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    pasted = paste_masks_in_image(mask, Boxes(torch.tensor([box], dtype=torch.float32)), hw)[0]
    half = left_half_mask(hw, box)
    assert (pasted & half).sum() >= 0.98 * (pasted | half).sum()
    return pasted


@pytest.mark.parametrize("merge", [{}, {"VIEW_DETECTIONS": "raw", "NMS_METHOD": "soft_nms"}])
def test_masks_and_keypoints_come_back_at_the_right_place_and_size(planted_detector, paint_image, merge):
    model = _ExtraField(planted_detector(with_masks=True, with_keypoints=True))
    out = run(fields_cfg(**merge), model, paint_image((800, 1200), [A, B, C]), with_details=True)
    assert set(model.raw_calls) == {0.001 if merge else None}
    # B and C come from the zoom-2 chips of scale 2: the coarse copies are small and covered.
    assert [v.zoom for v in out["autofocus_details"]["views_per_scale"][2]] == [2.0, 2.0]
    inst = out["instances"]
    assert sorted(inst.pred_classes.tolist()) == [0, 1, 2]
    masks = by_class(inst, "pred_masks")
    keypoints = by_class(inst, "pred_keypoints")
    heatmaps = by_class(inst, "pred_keypoint_heatmaps")
    for c, x0, y0, x1, y1 in (A, B, C):
        assert masks[c].shape == (800, 1200)
        assert torch.equal(masks[c], pasted_mask((800, 1200), (x0, y0, x1, y1))), c
        expected = torch.tensor([[x0, y0, 1.0], [(x0 + x1) / 2, (y0 + y1) / 2, 0.5]])
        assert torch.allclose(keypoints[c], expected, atol=1e-4), (c, keypoints[c])
        assert torch.equal(heatmaps[c], torch.full((2, 4, 4), float(c)))


def test_fields_follow_the_requested_output_size(planted_detector, paint_image):
    model = planted_detector(with_masks=True, with_keypoints=True)
    out = run(fields_cfg(), model, paint_image((800, 1200), [A, B, C]), height=400, width=600)
    masks = by_class(out["instances"], "pred_masks")
    keypoints = by_class(out["instances"], "pred_keypoints")
    assert masks[1].shape == (400, 600)
    assert torch.equal(masks[0], pasted_mask((400, 600), (50, 50, 200, 150)))
    assert torch.equal(masks[1], pasted_mask((400, 600), (300, 100, 308, 108)))
    assert torch.equal(masks[1], left_half_mask((400, 600), (300, 100, 308, 108)))
    assert torch.allclose(keypoints[2], torch.tensor([[450.0, 300.0, 1.0], [452.0, 302.0, 0.5]]))


def test_points_and_instances_map_from_a_zoom_2_chip_view():
    view = View(image_index=0, scale=2, box=(848, 528, 976, 656), out_hw=(256, 256))
    points = torch.tensor([[[104.0, 144.0], [112.0, 152.0]]])
    assert view.points_to_original(points).tolist() == [[[900.0, 600.0], [904.0, 604.0]]]
    inst = Instances((256, 256))
    inst.pred_boxes = Boxes(torch.tensor([[104.0, 144.0, 120.0, 160.0]]))
    inst.scores = torch.tensor([0.7])
    inst.pred_classes = torch.tensor([2])
    inst.pred_masks = torch.rand(1, 1, 28, 28)
    inst.pred_keypoints = torch.tensor([[[104.0, 144.0, 0.3], [120.0, 160.0, 0.9]]])
    out = instances_to_original(inst, view, (800, 1200))
    assert out.image_size == (800, 1200)
    assert out.pred_boxes.tensor.tolist() == [[900.0, 600.0, 908.0, 608.0]]
    assert out.pred_keypoints.tolist() == [[[900.0, 600.0, pytest.approx(0.3)], [908.0, 608.0, pytest.approx(0.9)]]]
    assert torch.equal(out.pred_masks, inst.pred_masks)  # box-relative: unchanged
    assert out.scores.tolist() == [pytest.approx(0.7)] and out.pred_classes.tolist() == [2]


class _ExtraField:
    """Wraps a planted detector: accepts (and records) ``raw_score_thresh`` (its detections are
    the same raw or not) and adds one more per-instance field ``name`` made by ``make(n)``."""

    def __init__(self, model, name=None, make=None):
        self.model, self.name, self.make = model, name, make
        self.device, self.input_channels, self.focus_stride = model.device, 3, model.focus_stride
        self.size_divisibility = model.size_divisibility
        self.raw_calls = []

    def normalize(self, images):
        return self.model.normalize(images)

    def detect(self, images, with_focus=True, raw_score_thresh=None):
        self.raw_calls.append(raw_score_thresh)
        results, focus = self.model.detect(images, with_focus)
        for inst in results if self.name else []:
            inst.set(self.name, self.make(len(inst)))
        return results, focus


def test_an_unknown_field_raises_naming_it(planted_detector, paint_image):
    model = _ExtraField(planted_detector(), "pred_densepose", lambda n: torch.zeros(n, 5))
    with pytest.raises(ValueError, match="pred_densepose"):
        run(fields_cfg(), model, paint_image((800, 1200), [A, B, C]))


def test_image_frame_masks_are_refused(planted_detector, paint_image):
    # (N, H, W) masks (already pasted in a view) cannot be carried to the original frame.
    model = _ExtraField(planted_detector(), "pred_masks", lambda n: torch.zeros(n, 64, 64))
    with pytest.raises(ValueError, match=r"pred_masks must be box-relative \(R, 1, M, M\)"):
        run(fields_cfg(), model, paint_image((800, 1200), [A, B, C]))


def test_bad_keypoints_are_refused():
    inst = Instances((10, 10))
    inst.pred_boxes = Boxes(torch.zeros(1, 4))
    inst.pred_keypoints = torch.zeros(1, 4, 2)
    with pytest.raises(ValueError, match=r"pred_keypoints must be \(R, K, 3\)"):
        instances_to_original(inst, View(0, 0, (0, 0, 10, 10), (10, 10)), (10, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_and_keypoints_on_cuda(planted_detector, paint_image):
    model = planted_detector(with_masks=True, with_keypoints=True).to("cuda")
    out = run(fields_cfg(), model, paint_image((800, 1200), [A, B, C]))
    masks = by_class(out["instances"], "pred_masks")
    assert masks[2].device.type == "cuda"
    assert torch.equal(masks[2].cpu(), pasted_mask((800, 1200), C[1:]))
