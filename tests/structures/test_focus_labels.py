"""FocusPixel label assignment on hand-made boxes."""
import math

import pytest
import torch
from detectron2.structures import Boxes

from autofocus_d2.structures import focus_pixel_targets


def _targets(boxes, image_hw=(64, 64), feature_hw=(4, 4), stride=16, **kw):
    return focus_pixel_targets(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        image_hw=image_hw,
        feature_hw=feature_hw,
        stride=stride,
        **kw,
    )


def _square(x0, y0, side):
    return [x0, y0, x0 + side, y0 + side]


def test_single_small_box_marks_its_cell():
    t = _targets([_square(0, 0, 10)])
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0] = 1
    assert torch.equal(t, expected)
    assert t.dtype == torch.long


def test_box_over_cell_edges_marks_every_overlapped_cell():
    t = _targets([[10, 10, 20, 20]])  # r = 10, spans cells 0 and 1 on both axes
    assert t[:2, :2].eq(1).all()
    assert t.sum().item() == 4


def test_box_on_cell_boundary_does_not_touch_the_next_cell():
    # [16, 32) on both axes is exactly cell (1, 1): cell 2 starts at 32, no positive overlap.
    t = _targets([[16, 16, 32, 32]])
    assert t[1, 1].item() == 1
    assert t.sum().item() == 1


@pytest.mark.parametrize(
    "side, label",
    [
        (4.9, -1),  # r < 5: ignored
        (5.0, 1),  # r = 5: positive (inclusive)
        (64.0, 1),  # r = 64: positive (inclusive)
        (64.5, -1),  # 64 < r <= 90: ignored
        (90.0, -1),  # r = 90: ignored (inclusive)
        (90.5, 0),  # r > 90: negative
    ],
)
def test_size_range_boundaries(side, label):
    t = _targets([_square(1, 1, side)], image_hw=(256, 256), feature_hw=(16, 16))
    assert t[0, 0].item() == label
    assert math.sqrt(side * side) == pytest.approx(side)


def test_positive_wins_over_ignore_and_ignore_over_negative():
    boxes = [_square(0, 0, 70), _square(20, 20, 8)]  # r = 70 ignored; r = 8 positive at cell (1,1)
    t = _targets(boxes, image_hw=(128, 128), feature_hw=(8, 8))
    assert t[1, 1].item() == 1
    assert t[0, 0].item() == -1 and t[4, 4].item() == -1  # cells 0..4 overlap [0, 70)
    assert t[5, 5].item() == 0


def test_padding_cells_are_ignored():
    # Valid image 40 x 56: rows starting at 48 (row 3) and columns starting at 64 (none) are padding.
    t = _targets([], image_hw=(40, 56), feature_hw=(4, 5))
    assert t[3].eq(-1).all()
    assert t[:, 4].eq(-1).all()  # column 4 starts at 64 >= 56
    assert t[:3, :4].eq(0).all()


def test_positive_cell_in_padding_is_ignored():
    t = _targets([[40, 40, 60, 60]], image_hw=(48, 48), feature_hw=(4, 4))
    assert t[2, 2].item() == 1  # starts at 32 < 48: valid
    assert t[3, 3].item() == -1  # starts at 48: padding wins


def test_accepts_boxes_and_custom_ranges():
    boxes = Boxes(torch.tensor([_square(0, 0, 30.0)]))
    t = focus_pixel_targets(boxes, image_hw=(64, 64), feature_hw=(4, 4), stride=16,
                            small_range=(5, 20), ignore_max=40)
    assert t[0, 0].item() == -1 and t[1, 1].item() == -1
    t = focus_pixel_targets(boxes, image_hw=(64, 64), feature_hw=(4, 4), stride=16,
                            small_range=(5, 20), ignore_max=25)
    assert t[0, 0].item() == 0


def test_matches_a_per_cell_reference_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 300
    wh = torch.rand(60, 2, generator=g) ** 2 * 150 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    stride, feat, img = 8, (40, 44), (310, 330)
    t = focus_pixel_targets(boxes, image_hw=img, feature_hw=feat, stride=stride)
    r = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    for i in range(feat[0]):
        for j in range(feat[1]):
            y0, x0 = i * stride, j * stride
            if y0 >= img[0] or x0 >= img[1]:
                assert t[i, j] == -1
                continue
            hit = (boxes[:, 0] < x0 + stride) & (boxes[:, 2] > x0) & (boxes[:, 1] < y0 + stride) & (
                boxes[:, 3] > y0
            )
            if (hit & (r >= 5) & (r <= 64)).any():
                want = 1
            elif (hit & ((r < 5) | ((r > 64) & (r <= 90)))).any():
                want = -1
            else:
                want = 0
            assert t[i, j].item() == want, (i, j)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="gt_boxes"):
        focus_pixel_targets(torch.zeros(3), image_hw=(8, 8), feature_hw=(1, 1), stride=8)
    with pytest.raises(ValueError, match="small_range"):
        _targets([], small_range=(64, 5))
    with pytest.raises(ValueError, match="stride"):
        _targets([], stride=0)


def test_ignored_boxes_make_their_cells_ignored_unless_positive():
    # A valid 10 px box in cell (0, 0); an ignored (out-of-range) 40 px box over cells (2..3, 2..3)
    # and another ignored box over cell (0, 0), where the valid box keeps it positive.
    t = _targets([_square(0, 0, 10)], ignored_boxes=torch.tensor([[32.0, 32.0, 64.0, 64.0], [0.0, 0.0, 8.0, 8.0]]))
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[0, 0] = 1
    expected[2:, 2:] = -1
    assert torch.equal(t, expected)
    # Labelled by size instead (the official code's default), the 40 px box is a FocusPixel.
    t = _targets([_square(0, 0, 10), [32, 32, 64, 64]])
    assert t[2:, 2:].eq(1).all() and t[0, 0] == 1


def test_model_focus_loss_follows_ignored_box_labels(compact_cfg):
    from detectron2.modeling import build_model
    from detectron2.structures import Instances

    cfg = compact_cfg()
    losses = {}
    for mode in ("size", "ignore"):
        cfg.MODEL.FOCUS_HEAD.IGNORED_BOX_LABELS = mode
        torch.manual_seed(0)
        model = build_model(cfg)
        with torch.no_grad():  # a head that leans to "FocusPixel" (a fresh one predicts 0.5 everywhere)
            model.focus_head.predictor.bias.copy_(torch.tensor([0.0, 2.0]))
        inst = Instances((128, 128))
        inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 24.0, 24.0], [64.0, 64.0, 96.0, 96.0]]))
        inst.gt_classes = torch.tensor([0, 1])
        inst.gt_ignore = torch.tensor([False, True])
        features = model.backbone(torch.zeros(1, 3, 128, 128))
        losses[mode] = model.focus_losses(features, [inst], [(128, 128)]).item()
    # Same weights and input, different labels of the ignored box's cells: different losses.
    assert losses["size"] != pytest.approx(losses["ignore"])


def test_ignored_boxes_must_be_n_by_4():
    with pytest.raises(ValueError, match="ignored_boxes must be"):
        _targets([], ignored_boxes=torch.zeros(8))


# ------------------------------------------------------------ the small-object bound's frame
@pytest.mark.parametrize("step", [1.0, 1.67, 2.0, 3.8])
def test_next_scale_rule_measures_the_lower_bound_at_the_next_scale(step):
    """With SMALL_MIN_FRAME next_scale an object is a FocusPixel when the next scale, ``step`` times
    finer, sees it at >= 5 px: r >= 5 / step here. Boxes just inside and just outside the bound."""
    from autofocus_d2.structures import focus_size_range

    lo, hi = focus_size_range((5.0, 64.0), step, "next_scale")
    assert hi == 64.0 and lo == pytest.approx(5.0 / step)
    inside, outside = lo * 1.01, lo * 0.99
    for side, label in ((inside, 1), (outside, -1)):
        t = _targets([[20.0, 20.0, 20.0 + side, 20.0 + side]], small_range=(lo, hi))
        assert t[1, 1].item() == label
    # The paper's rule keeps 5 px at this scale whatever the step: the same small box is ignored.
    assert focus_size_range((5.0, 64.0), step, "input") == (5.0, 64.0)
    if step > 1.02:
        t = _targets([[20.0, 20.0, 20.0 + inside, 20.0 + inside]], small_range=(5.0, 64.0))
        assert t[1, 1].item() == -1


def test_next_scale_rule_is_the_paper_rule_without_a_finer_scale():
    from autofocus_d2.structures import focus_size_range

    assert focus_size_range((5.0, 64.0), 0.8, "next_scale") == (5.0, 64.0)  # not finer: step 1
    with pytest.raises(ValueError, match="small_min_frame"):
        focus_size_range((5.0, 64.0), 2.0, "original")


def test_training_loss_uses_each_chips_zoom_step(compact_cfg):
    """A 3 px object is ignored by the paper's rule and a FocusPixel under next_scale with a zoom
    step of 2 (6 px at the next scale): the loss differs, and equals the paper's at step 1."""
    from detectron2.structures import Instances

    from detectron2.modeling import build_model

    cfg = compact_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.focus_small_min_frame == "next_scale"
    features = {model.focus_in_feature: torch.randn(1, 64, 8, 8)}
    inst = Instances((128, 128))
    inst.gt_boxes = Boxes(torch.tensor([[40.0, 40.0, 43.0, 43.0]]))
    paper = model.focus_losses(features, [inst], [(128, 128)], [1.0]).item()
    assert model.focus_losses(features, [inst], [(128, 128)]).item() == paper
    stepped = model.focus_losses(features, [inst], [(128, 128)], [2.0]).item()
    assert stepped != paper
