import math

import pytest
import torch

from autofocus_d2.inference import (
    drop_border_cut,
    drop_small_covered,
    merge_detections,
    merge_indices,
    stacking_keep_mask,
)
from autofocus_d2.structures.views import View


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------
# drop_border_cut
# ---------------------------------------------------------------------------------------------


def test_drop_border_cut_inner_chip():
    chip = torch.tensor([100.0, 100.0, 200.0, 200.0])
    boxes = _t(
        [
            [105.0, 120.0, 150.0, 150.0],  # left distance 5 == margin: dropped
            [105.5, 120.0, 150.0, 150.0],  # left distance 5.5 > margin: kept
            [120.0, 120.0, 195.0, 150.0],  # right distance 5: dropped
            [120.0, 120.0, 194.0, 194.0],  # distances 20, 20, 6, 6: kept
            [90.0, 120.0, 150.0, 150.0],  # crosses the left edge: dropped
            [120.0, 96.0, 150.0, 150.0],  # crosses the top edge: dropped
            [120.0, 120.0, 150.0, 195.0],  # bottom distance 5: dropped
            [150.0, 104.0, 160.0, 110.0],  # top distance 4: dropped
        ]
    )
    keep = drop_border_cut(boxes, chip, (400, 400), margin=5.0)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False, True, False, True, False, False, False, False]


def test_drop_border_cut_chip_on_image_border():
    # Chip touches the image's left and top borders; its right and bottom edges are inner.
    chip = torch.tensor([0.0, 0.0, 200.0, 200.0])
    boxes = _t(
        [
            [0.0, 0.0, 50.0, 50.0],  # on the image border: kept
            [10.0, 10.0, 198.0, 50.0],  # 2 px from the inner right edge: dropped
            [10.0, 10.0, 50.0, 196.0],  # 4 px from the inner bottom edge: dropped
            [10.0, 10.0, 194.0, 194.0],  # kept
        ]
    )
    keep = drop_border_cut(boxes, chip, (400, 300), margin=5.0)
    assert keep.tolist() == [True, False, False, True]
    # The same chip covering the whole image (H, W) = (200, 200): no inner edge at all.
    assert drop_border_cut(boxes, chip, (200, 200), margin=5.0).tolist() == [True] * 4


def test_drop_border_cut_image_border_tolerance():
    boxes = _t([[1.0, 1.0, 9.0, 9.0]])
    # x0 = 0.5 and x1 = W - 0.5 count as image borders; 0.6 and W - 0.6 do not.
    def keep(chip):
        return drop_border_cut(boxes, torch.tensor(chip), (10, 10), 2.0).tolist()

    assert keep([0.5, 0.5, 9.5, 9.5]) == [True]
    assert keep([0.6, 0.0, 10.0, 10.0]) == [False]
    assert keep([0.0, 0.6, 10.0, 10.0]) == [False]
    assert keep([0.0, 0.0, 9.4, 10.0]) == [False]
    assert keep([0.0, 0.0, 10.0, 9.4]) == [False]


def test_drop_border_cut_zero_margin():
    chip = torch.tensor([100.0, 100.0, 200.0, 200.0])
    boxes = _t([[100.0, 120.0, 150.0, 150.0], [100.1, 120.0, 150.0, 150.0]])
    assert drop_border_cut(boxes, chip, (400, 400), margin=0.0).tolist() == [False, True]


def test_drop_border_cut_empty_and_errors():
    chip = torch.tensor([100.0, 100.0, 200.0, 200.0])
    keep = drop_border_cut(torch.zeros(0, 4), chip, (400, 400), margin=5.0)
    assert keep.shape == (0,) and keep.dtype == torch.bool
    with pytest.raises(ValueError, match="margin must be finite and >= 0, got -1.0"):
        drop_border_cut(torch.zeros(0, 4), chip, (400, 400), margin=-1.0)
    with pytest.raises(ValueError, match=r"chip must have shape \(4,\), got \(1, 4\)"):
        drop_border_cut(torch.zeros(0, 4), chip[None], (400, 400), margin=5.0)
    with pytest.raises(ValueError, match=r"boxes must have shape \(R, 4\), got \(4,\)"):
        drop_border_cut(chip, chip, (400, 400), margin=5.0)


# ---------------------------------------------------------------------------------------------
# drop_small_covered
# ---------------------------------------------------------------------------------------------


def test_drop_small_covered():
    chips = _t([[0.0, 0.0, 100.0, 100.0]])
    boxes = _t(
        [
            [10.0, 10.0, 40.0, 40.0],  # inside, size 30 < 50: dropped
            [10.0, 10.0, 70.0, 70.0],  # inside, size 60: kept
            [10.0, 10.0, 60.0, 60.0],  # inside, size exactly 50 (not < 50): kept
            [90.0, 90.0, 100.0005, 100.0],  # inside within the 1e-3 tolerance, small: dropped
            [90.0, 90.0, 100.01, 100.0],  # sticks out by 0.01: kept
            [150.0, 150.0, 160.0, 160.0],  # outside: kept
        ]
    )
    keep = drop_small_covered(boxes, chips, max_size=50.0)
    assert keep.tolist() == [False, True, True, False, True, True]


def test_drop_small_covered_needs_a_single_chip():
    # Inside the union of two chips but inside neither: kept.
    chips = _t([[0.0, 0.0, 50.0, 50.0], [50.0, 0.0, 100.0, 50.0]])
    boxes = _t([[40.0, 10.0, 60.0, 20.0], [55.0, 10.0, 60.0, 20.0]])
    assert drop_small_covered(boxes, chips, max_size=50.0).tolist() == [True, False]


def test_drop_small_covered_empty():
    boxes = _t([[10.0, 10.0, 20.0, 20.0]])
    assert drop_small_covered(boxes, torch.zeros(0, 4), max_size=1e9).tolist() == [True]
    keep = drop_small_covered(torch.zeros(0, 4), _t([[0.0, 0.0, 1.0, 1.0]]), max_size=10.0)
    assert keep.shape == (0,) and keep.dtype == torch.bool
    with pytest.raises(ValueError, match=r"finer_chips must have shape \(R, 4\)"):
        drop_small_covered(boxes, torch.zeros(4), max_size=10.0)


# ---------------------------------------------------------------------------------------------
# merge_detections
# ---------------------------------------------------------------------------------------------

# IoU([0, 0, 10, 10], [1, 1, 11, 11]) = 81 / 119
_IOU = 81.0 / 119.0


def _dets():
    boxes = _t(
        [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [50.0, 50.0, 60.0, 60.0],
            [1.0, 1.0, 11.0, 11.0],
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 0, 0, 1])
    return boxes, scores, classes


def test_nms_classwise():
    boxes, scores, classes = _dets()
    out_boxes, out_scores, out_classes = merge_detections(
        boxes, scores, classes, nms_thresh=0.5, max_det=100
    )
    # box 1 is suppressed by box 0 (same class, IoU 0.68); box 3 is of another class.
    assert torch.equal(out_boxes, boxes[[0, 2, 3]])
    assert torch.equal(out_scores, torch.tensor([0.9, 0.7, 0.6]))
    assert torch.equal(out_classes, torch.tensor([0, 0, 1]))
    # IoU 0.68 < 0.7: nothing suppressed
    _, out_scores, _ = merge_detections(boxes, scores, classes, nms_thresh=0.7, max_det=100)
    assert torch.equal(out_scores, torch.tensor([0.9, 0.8, 0.7, 0.6]))


def test_nms_max_det_and_score_thresh():
    boxes, scores, classes = _dets()
    out = merge_detections(boxes, scores, classes, nms_thresh=0.5, max_det=2)
    assert torch.equal(out[1], torch.tensor([0.9, 0.7]))
    out = merge_detections(boxes, scores, classes, nms_thresh=0.5, max_det=-1, score_thresh=0.65)
    assert torch.equal(out[1], torch.tensor([0.9, 0.7]))
    # A box below score_thresh does not suppress anything.
    out = merge_detections(boxes, scores, classes, nms_thresh=0.5, max_det=-1, score_thresh=0.95)
    assert out[0].shape == (0, 4) and out[1].shape == (0,) and out[2].shape == (0,)


def test_soft_nms_exact_decay():
    boxes, scores, classes = _dets()
    out_boxes, out_scores, out_classes = merge_detections(
        boxes, scores, classes, nms_thresh=0.5, max_det=100, method="soft_nms", soft_nms_sigma=0.5
    )
    decayed = 0.8 * math.exp(-(_IOU**2) / 0.5)  # 0.3167086
    # box 1 decays below box 2 (no overlap) and box 3 (other class, no decay).
    assert torch.equal(out_boxes, boxes[[0, 2, 3, 1]])
    assert torch.equal(out_classes, torch.tensor([0, 0, 1, 0]))
    assert torch.allclose(out_scores, torch.tensor([0.9, 0.7, 0.6, decayed]), rtol=0, atol=1e-6)
    assert abs(decayed - 0.3167086) < 1e-6


def test_soft_nms_sigma_and_repeated_decay():
    # Two identical boxes (IoU 1) and one overlapping both: scores decay cumulatively.
    boxes = _t([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]])
    scores = torch.tensor([0.9, 0.85, 0.8])
    classes = torch.zeros(3, dtype=torch.int64)
    sigma = 0.3
    _, out_scores, _ = merge_detections(
        boxes, scores, classes, nms_thresh=0.5, max_det=10, method="soft_nms", soft_nms_sigma=sigma
    )
    # Box 0 selected: box 1 -> 0.85 e^{-1/0.3}, box 2 (IoU 0.5) -> 0.8 e^{-0.25/0.3} = 0.3478.
    # Box 2 is now the highest; selecting it decays box 1 once more by e^{-0.25/0.3}.
    s2 = 0.8 * math.exp(-0.25 / sigma)
    s1 = 0.85 * math.exp(-1.0 / sigma) * math.exp(-0.25 / sigma)
    assert torch.allclose(out_scores, torch.tensor([0.9, s2, s1]), rtol=0, atol=1e-6)


def test_soft_nms_score_thresh_and_max_det():
    boxes, scores, classes = _dets()
    kwargs = dict(nms_thresh=0.5, method="soft_nms", soft_nms_sigma=0.5)
    # decayed 0.3167 < 0.4: dropped
    out = merge_detections(boxes, scores, classes, max_det=100, score_thresh=0.4, **kwargs)
    assert torch.equal(out[0], boxes[[0, 2, 3]])
    assert torch.allclose(out[1], torch.tensor([0.9, 0.7, 0.6]))
    out = merge_detections(boxes, scores, classes, max_det=2, **kwargs)
    assert torch.equal(out[0], boxes[[0, 2]])
    out = merge_detections(boxes, scores, classes, max_det=0, **kwargs)
    assert out[0].shape == (0, 4)


@pytest.mark.parametrize("method", ["nms", "soft_nms"])
def test_merge_detections_empty(method):
    boxes, scores, classes = merge_detections(
        torch.zeros(0, 4),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.int64),
        nms_thresh=0.5,
        max_det=100,
        method=method,
    )
    assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
    assert classes.dtype == torch.int64


def test_merge_detections_errors():
    boxes, scores, classes = _dets()
    with pytest.raises(ValueError, match="Unknown merge method 'wbf'"):
        merge_detections(boxes, scores, classes, nms_thresh=0.5, max_det=10, method="wbf")
    with pytest.raises(ValueError, match="soft_nms_sigma must be > 0, got 0.0"):
        merge_detections(
            boxes,
            scores,
            classes,
            nms_thresh=0.5,
            max_det=10,
            method="soft_nms",
            soft_nms_sigma=0.0,
        )
    with pytest.raises(ValueError, match=r"must have shape \(4,\)"):
        merge_detections(boxes, scores[:3], classes, nms_thresh=0.5, max_det=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("method", ["nms", "soft_nms"])
def test_merge_detections_cuda(method):
    boxes, scores, classes = _dets()
    cpu = merge_detections(boxes, scores, classes, nms_thresh=0.5, max_det=10, method=method)
    gpu = merge_detections(
        boxes.cuda(), scores.cuda(), classes.cuda(), nms_thresh=0.5, max_det=10, method=method
    )
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        assert torch.allclose(a.float(), b.cpu().float(), atol=1e-6)
    chip = torch.tensor([0.0, 0.0, 30.0, 30.0], device="cuda")
    keep = drop_border_cut(boxes.cuda(), chip, (100, 100), 2.0)
    assert keep.tolist() == [True, True, False, True]


def test_trusted_chip_area_moves_only_inner_edges():
    from autofocus_d2.inference.focus_stacking import trusted_chip_area

    chips = torch.tensor([[0.0, 100.0, 300.0, 800.0], [500.0, 0.0, 1200.0, 400.0]])
    out = trusted_chip_area(chips, (800, 1200), 10.0)
    # Chip 0 touches the left and bottom image borders, chip 1 the top and right ones; inner edges
    # move by the margin plus 0.002 px.
    expected = torch.tensor([[0.0, 110.002, 289.998, 800.0], [510.002, 0.0, 1200.0, 389.998]])
    assert torch.allclose(out, expected, atol=1e-4, rtol=0)


def test_a_coarse_box_near_an_inner_chip_edge_is_not_covered():
    from autofocus_d2.inference.focus_stacking import trusted_chip_area

    chip = torch.tensor([[100.0, 100.0, 300.0, 300.0]])
    boxes = torch.tensor([[105.0, 150.0, 125.0, 170.0], [150.0, 150.0, 170.0, 170.0]])
    keep = drop_small_covered(boxes, trusted_chip_area(chip, (1000, 1000), 10.0), 64.0)
    # The first box would be dropped at the finer scale by the border rule, so it stays here.
    assert keep.tolist() == [True, False]


def test_a_coarse_box_exactly_at_the_margin_is_not_covered():
    # The border rule drops a chip box exactly `margin` from an inner edge, so the coarse copy must
    # stay; 0.01 px further in, the chip keeps its copy and the coarse one is dropped.
    from autofocus_d2.inference.focus_stacking import trusted_chip_area

    chip = torch.tensor([[100.0, 100.0, 300.0, 300.0]])
    boxes = torch.tensor([[110.0, 150.0, 130.0, 170.0], [110.01, 150.0, 130.0, 170.0],
                          [150.0, 150.0, 170.0, 290.0], [150.0, 150.0, 170.0, 289.99]])
    assert drop_border_cut(boxes, chip[0], (1000, 1000), 10.0).tolist() == [False, True, False, True]
    keep = drop_small_covered(boxes, trusted_chip_area(chip, (1000, 1000), 10.0), 64.0)
    assert keep.tolist() == [True, False, True, False]


def _serial_soft_nms(boxes, scores, classes, sigma, score_thresh, max_det):
    """Reference: the textbook loop, one global selection at a time."""
    from detectron2.structures import Boxes, pairwise_iou

    scores = scores.clone()
    alive = scores >= score_thresh
    keep, kept = [], []
    while (max_det < 0 or len(keep) < max_det) and bool(alive.any()):
        best = int(torch.where(alive, scores, torch.tensor(-math.inf)).argmax())
        keep.append(best)
        kept.append(float(scores[best]))
        alive[best] = False
        iou = pairwise_iou(Boxes(boxes[best : best + 1]), Boxes(boxes))[0] * (classes == classes[best])
        scores = torch.where(alive, scores * torch.exp(-(iou**2) / sigma), scores)
        alive &= scores >= score_thresh
    return keep, kept


@pytest.mark.parametrize("seed,max_det,thresh", [(0, 100, 0.0), (1, 30, 0.001), (2, -1, 0.05), (3, 5, 0.0)])
def test_soft_nms_equals_the_serial_algorithm(seed, max_det, thresh):
    g = torch.Generator().manual_seed(seed)
    n = 400
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 60 + 4
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, 6, (n,), generator=g)
    ref_keep, ref_scores = _serial_soft_nms(boxes, scores, classes, 0.55, thresh, max_det)
    keep, kept = merge_indices(boxes, scores, classes, nms_thresh=0.5, max_det=max_det,
                               method="soft_nms", soft_nms_sigma=0.55, score_thresh=thresh)
    assert keep.tolist() == ref_keep
    assert kept.tolist() == pytest.approx(ref_scores, rel=1e-6, abs=1e-9)
    assert len(ref_keep) >= min(max_det, 50) if max_det >= 0 else len(ref_keep) > 50


# ---------------------------------------------------------------------------------------------
# stacking_keep_mask: the three rules of one view together
# ---------------------------------------------------------------------------------------------


def test_stacking_keep_mask_applies_each_rule():
    # A scale-1 chip (100, 100, 300, 300) at zoom 2 of a 400 x 400 image; one finer chip
    # (150, 150, 250, 250), all of its edges inner: trusted area (160, 160, 240, 240) with margin 10.
    view = View(0, 1, (100, 100, 300, 300), (400, 400))
    finer = [View(0, 2, (150, 150, 250, 250), (400, 400))]
    boxes = _t(
        [
            [105.0, 150.0, 140.0, 180.0],  # 5 px from the chip's inner left edge: border-cut
            [170.0, 170.0, 190.0, 190.0],  # r 20 < 64 / zoom 2, in the trusted area: small, covered
            [120.0, 120.0, 160.0, 160.0],  # r 40, not in the trusted area: kept
            [120.0, 120.0, 270.0, 270.0],  # r 150 > valid max 100: out of range
            [165.0, 165.0, 235.0, 235.0],  # r 70 >= 32, covered: kept
        ]
    )
    rules = dict(border_margin=10.0, valid_range=[-1.0, 100.0], small_drop_size=64.0, num_scales=3)
    keep = stacking_keep_mask(boxes, view, finer, (400, 400), **rules)
    assert keep.tolist() == [False, False, True, False, True]
    # Each rule switched off in turn brings back its box.
    assert stacking_keep_mask(boxes, view, finer, (400, 400), **{**rules, "small_drop_size": 0.0}).tolist() == [
        False, True, True, False, True]
    assert stacking_keep_mask(boxes, view, [], (400, 400), **rules).tolist() == [False, True, True, False, True]
    assert stacking_keep_mask(boxes, view, finer, (400, 400), **{**rules, "num_scales": 1}).tolist() == [
        False, False, True, True, True]
    whole = View(0, 1, (0, 0, 400, 400), (800, 800))  # the whole image: no border rule
    assert stacking_keep_mask(boxes, whole, finer, (400, 400), **rules).tolist() == [True, False, True, False, True]
    assert stacking_keep_mask(_t([]), view, finer, (400, 400), **rules).shape == (0,)
