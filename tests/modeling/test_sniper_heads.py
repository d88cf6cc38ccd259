"""SNIPER's ignored ground truth in the RPN and ROI heads: exact labels on hand-made boxes."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import autofocus_d2
from autofocus_d2.modeling import (
    SNIPERRPN,
    SNIPERRes5ROIHeads,
    SNIPERStandardROIHeads,
    ignored_overlap_mask,
    split_ignored,
)

IMAGE_HW = (200, 200)
NUM_CLASSES = 3


def _gt(boxes, classes, ignore=None, image_hw=IMAGE_HW):
    """Ground truth of one image; ``ignore`` None = no gt_ignore field (stock Detectron2 input)."""
    inst = Instances(image_hw)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if ignore is not None:
        inst.gt_ignore = torch.tensor(ignore, dtype=torch.bool)
    return inst


def _rpn_kwargs(batch_size_per_image=256):
    return dict(
        in_features=["p2"],
        head=StandardRPNHead(in_channels=8, num_anchors=1, box_dim=4),
        anchor_generator=DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[4]),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.5,
        pre_nms_topk=(100, 100),
        post_nms_topk=(50, 50),
    )


def _anchors(boxes):
    return [Boxes(torch.tensor(boxes, dtype=torch.float32))]


# Hand-made boxes, input-image frame (x0, y0, x1, y1). IoU values written out for the reader.
VALID = [0.0, 0.0, 32.0, 32.0]
IGNORED = [104.0, 100.0, 136.0, 132.0]
A_VALID = [0.0, 0.0, 32.0, 32.0]  # IoU(VALID) = 1
A_IGNORED = [100.0, 100.0, 132.0, 132.0]  # IoU(IGNORED) = 896 / 1152 = 0.778
A_NEAR = [124.0, 100.0, 156.0, 132.0]  # IoU(IGNORED) = 384 / 1664 = 0.231, below 0.3
A_FAR = [150.0, 150.0, 182.0, 182.0]  # overlaps nothing


# ----------------------------------------------------------------------------- helpers


def test_split_ignored_keeps_order_and_drops_the_field():
    gt = _gt([VALID, IGNORED, A_FAR], [2, 1, 0], ignore=[False, True, False])
    valid, ignored = split_ignored(gt)
    assert valid.gt_boxes.tensor.tolist() == [VALID, A_FAR]
    assert valid.gt_classes.tolist() == [2, 0]
    assert not valid.has("gt_ignore") and gt.has("gt_ignore") and len(gt) == 3
    assert ignored.tensor.tolist() == [IGNORED]

    plain = _gt([VALID], [1])
    same, none = split_ignored(plain)
    assert same is plain and none.tensor.shape == (0, 4)


@pytest.mark.parametrize(
    "ignore, match", [(torch.tensor([1, 0]), "bool"), (torch.tensor([[True], [False]]), "shape")]
)
def test_split_ignored_rejects_bad_field(ignore, match):
    gt = _gt([VALID, A_FAR], [0, 1])
    gt.gt_ignore = ignore
    with pytest.raises(ValueError, match=match):
        split_ignored(gt)


def test_ignored_overlap_mask_is_strictly_above_the_threshold():
    boxes = Boxes(torch.tensor([A_IGNORED, A_NEAR, A_FAR]))
    ignored = Boxes(torch.tensor([IGNORED]))
    assert ignored_overlap_mask(ignored, boxes, 0.3).tolist() == [True, False, False]
    assert ignored_overlap_mask(ignored, boxes, 0.2).tolist() == [True, True, False]
    assert ignored_overlap_mask(ignored, boxes, 0.8).tolist() == [False, False, False]
    assert ignored_overlap_mask(Boxes(torch.zeros(0, 4)), boxes, 0.3).tolist() == [False] * 3


# -------------------------------------------------------------------------------------- RPN


def test_anchor_overlapping_only_an_ignored_box_is_ignored():
    rpn = SNIPERRPN(ignore_iou=0.3, **_rpn_kwargs())
    anchors = _anchors([A_VALID, A_IGNORED, A_NEAR, A_FAR])
    ignored = _gt([VALID, IGNORED], [2, 1], ignore=[False, True])
    absent = _gt([VALID], [2], ignore=[False])
    (labels,), (matched,) = rpn.label_and_sample_anchors(anchors, [ignored])
    assert labels.tolist() == [1, -1, 0, 0]
    assert matched[0].tolist() == VALID
    (labels,), _ = rpn.label_and_sample_anchors(anchors, [absent])
    assert labels.tolist() == [1, 0, 0, 0]
    # The threshold is the configured one: IoU 0.778 is not above 0.8.
    rpn.ignore_iou = 0.8
    (labels,), _ = rpn.label_and_sample_anchors(anchors, [ignored])
    assert labels.tolist() == [1, 0, 0, 0]


def test_foreground_anchor_overlapping_an_ignored_box_is_ignored():
    rpn = SNIPERRPN(**_rpn_kwargs())
    anchors = _anchors([A_VALID, A_FAR])
    # IoU(A_VALID, [8, 0, 40, 32]) = 768 / 1280 = 0.6: the anchor matches VALID (IoU 1) yet is -1.
    gt = _gt([VALID, [8.0, 0.0, 40.0, 32.0]], [2, 0], ignore=[False, True])
    (labels,), _ = rpn.label_and_sample_anchors(anchors, [gt])
    assert labels.tolist() == [-1, 0]
    (labels,), _ = rpn.label_and_sample_anchors(anchors, [_gt([VALID], [2])])
    assert labels.tolist() == [1, 0]


def test_image_without_valid_box_starts_as_background():
    rpn = SNIPERRPN(**_rpn_kwargs())
    anchors = _anchors([A_VALID, A_IGNORED, A_NEAR, A_FAR])
    only_ignored = _gt([IGNORED], [1], ignore=[True])
    empty = _gt([], [], ignore=[])
    labels, matched = rpn.label_and_sample_anchors(anchors, [only_ignored, empty])
    assert labels[0].tolist() == [0, -1, 0, 0]
    assert labels[1].tolist() == [0, 0, 0, 0]
    assert matched[0].shape == (4, 4) and matched[1].shape == (4, 4)


def _random_gt(generator, num, image_hw=IMAGE_HW):
    xy = torch.rand(num, 2, generator=generator) * 150
    wh = torch.rand(num, 2, generator=generator) * 50 + 5
    inst = Instances(image_hw)
    inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
    inst.gt_classes = torch.randint(0, NUM_CLASSES, (num,), generator=generator)
    return inst


def test_rpn_without_gt_ignore_is_bit_identical_to_stock():
    g = torch.Generator().manual_seed(3)
    anchors = [_random_gt(g, 300).gt_boxes, _random_gt(g, 200).gt_boxes]  # two levels
    gts = [_random_gt(g, 4), _random_gt(g, 0), _random_gt(g, 7)]
    all_false = []
    for gt in gts:
        copy = Instances(gt.image_size, **gt.get_fields())
        copy.gt_ignore = torch.zeros(len(gt), dtype=torch.bool)
        all_false.append(copy)
    kwargs = _rpn_kwargs(batch_size_per_image=64)  # fewer than the anchors: random sampling
    stock, sniper = RPN(**kwargs), SNIPERRPN(**kwargs)
    torch.manual_seed(0)
    ref_labels, ref_boxes = stock.label_and_sample_anchors(anchors, gts)
    for inputs in (gts, all_false):
        torch.manual_seed(0)
        labels, boxes = sniper.label_and_sample_anchors(anchors, inputs)
        assert all(torch.equal(a, b) for a, b in zip(labels, ref_labels))
        assert all(torch.equal(a, b) for a, b in zip(boxes, ref_boxes))
    assert (ref_labels[0] == 1).any() and (ref_labels[0] == -1).any()  # the case is not trivial


@pytest.mark.parametrize("training", [False, True])
def test_rpn_proposals_equal_stock_with_top_k_before_decoding(training):
    # Two levels, three images: level 0 has more anchors than pre_nms_topk (100), level 1 fewer.
    g = torch.Generator().manual_seed(5)
    anchors = [Boxes(torch.rand(400, 4, generator=g).cumsum(1) * 60),
               Boxes(torch.rand(70, 4, generator=g).cumsum(1) * 60)]
    logits = [torch.randn(3, 400, generator=g), torch.randn(3, 70, generator=g)]
    deltas = [torch.randn(3, 400, 4, generator=g) * 0.3, torch.randn(3, 70, 4, generator=g) * 0.3]
    sizes = [(200, 200), (180, 240), (200, 150)]
    kwargs = _rpn_kwargs()
    stock, sniper = RPN(**kwargs).train(training), SNIPERRPN(**kwargs).train(training)
    ref = stock.predict_proposals(anchors, logits, deltas, sizes)
    out = sniper.predict_proposals(anchors, logits, deltas, sizes)
    for a, b in zip(ref, out):
        assert len(a) == len(b) == 50  # post_nms_topk
        assert torch.equal(a.proposal_boxes.tensor, b.proposal_boxes.tensor)
        assert torch.equal(a.objectness_logits, b.objectness_logits)


def _softplus(x):
    return math.log1p(math.exp(x))


def _rpn_losses(rpn, anchors, logits, deltas, gts):
    """Detectron2's RPN losses of fixed predictions against the labels of ``gts``."""
    labels, matched_boxes = rpn.label_and_sample_anchors(anchors, gts)
    with EventStorage():
        return rpn.losses(anchors, logits, labels, deltas, matched_boxes)


def test_rpn_loss_differs_between_ignored_and_absent_box():
    rpn = SNIPERRPN(**_rpn_kwargs())
    anchors = _anchors([A_VALID, A_IGNORED, A_NEAR, A_FAR])
    logits = [torch.tensor([[2.0, -1.0, 0.5, 0.0]])]  # (N, R)
    deltas = [torch.full((1, 4, 4), 0.5)]  # (N, R, 4)
    ignored = _rpn_losses(
        rpn, anchors, logits, deltas, [_gt([VALID, IGNORED], [2, 1], ignore=[False, True])]
    )
    absent = _rpn_losses(rpn, anchors, logits, deltas, [_gt([VALID], [2], ignore=[False])])
    # BCE(l, 1) = softplus(-l), BCE(l, 0) = softplus(l); summed over labelled anchors, / 256.
    assert absent["loss_rpn_cls"].item() == pytest.approx(
        (_softplus(-2.0) + _softplus(-1.0) + _softplus(0.5) + _softplus(0.0)) / 256, rel=1e-6
    )
    assert ignored["loss_rpn_cls"].item() == pytest.approx(
        (_softplus(-2.0) + _softplus(0.5) + _softplus(0.0)) / 256, rel=1e-6
    )
    # One positive anchor (A_VALID == VALID, target deltas 0): L1 of four 0.5 deltas = 2, / 256.
    assert absent["loss_rpn_loc"].item() == pytest.approx(2.0 / 256, rel=1e-6)
    assert ignored["loss_rpn_loc"].item() == pytest.approx(2.0 / 256, rel=1e-6)

    # The positive anchor itself overlapping an ignored box: no regression loss left.
    fg_ignored = _rpn_losses(
        rpn, anchors, logits, deltas,
        [_gt([VALID, [8.0, 0.0, 40.0, 32.0]], [2, 0], ignore=[False, True])],
    )
    assert fg_ignored["loss_rpn_loc"].item() == 0.0
    assert fg_ignored["loss_rpn_cls"].item() == pytest.approx(
        (_softplus(-1.0) + _softplus(0.5) + _softplus(0.0)) / 256, rel=1e-6
    )


def test_rpn_from_config_reads_ignore_iou():
    cfg = get_cfg()
    autofocus_d2.add_autofocus_config(cfg)
    cfg.MODEL.SNIPER.IGNORE_IOU = 0.45
    rpn = SNIPERRPN(cfg, {"res4": ShapeSpec(channels=8, stride=16)})
    assert rpn.ignore_iou == 0.45 and SNIPERRPN.supports_ignored_boxes
    cfg.MODEL.SNIPER.IGNORE_IOU = 0.0
    with pytest.raises(ValueError, match="MODEL.SNIPER.IGNORE_IOU"):
        SNIPERRPN(cfg, {"res4": ShapeSpec(channels=8, stride=16)})
    with pytest.raises(KeyError, match="add_autofocus_config"):
        SNIPERRPN(get_cfg(), {"res4": ShapeSpec(channels=8, stride=16)})


# -------------------------------------------------------------------------------- ROI heads


def _roi_heads(name, ignore_iou=0.3):
    """Small ROI heads built from a config: FPN-style (p2) or C4 (res4, a thin res5)."""
    cfg = get_cfg()
    autofocus_d2.add_autofocus_config(cfg)
    cfg.MODEL.SNIPER.IGNORE_IOU = ignore_iou
    cfg.MODEL.ROI_HEADS.NAME = name
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
    if "Res5" in name:
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8
        cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 2
        shapes = {"res4": ShapeSpec(channels=32, stride=16)}
    else:
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
        shapes = {"p2": ShapeSpec(channels=8, stride=4)}
    return build_roi_heads(cfg, shapes)


def _proposals(boxes, image_hw=IMAGE_HW):
    p = Instances(image_hw)
    p.proposal_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    p.objectness_logits = torch.zeros(len(p))
    return p


def _as_set(proposals):
    return {
        (tuple(b), int(c))
        for b, c in zip(proposals.proposal_boxes.tensor.tolist(), proposals.gt_classes.tolist())
    }


# Two foreground proposals of VALID (IoU 0.939 and 0.882) that also overlap IGNORED_FG (IoU 0.829
# and 0.882), a background one on IGNORED (0.778), one just off it (0.231), two touching nothing.
P_FG1 = [1.0, 0.0, 33.0, 32.0]
P_FG2 = [2.0, 0.0, 34.0, 32.0]
P_BG_SIDE = [40.0, 0.0, 72.0, 32.0]
IGNORED_FG = [4.0, 0.0, 36.0, 32.0]
ROI_PROPOSALS = [P_FG1, P_FG2, A_IGNORED, A_NEAR, A_FAR, P_BG_SIDE]


@pytest.mark.parametrize(
    "name, cls",
    [
        ("SNIPERStandardROIHeads", SNIPERStandardROIHeads),
        ("SNIPERRes5ROIHeads", SNIPERRes5ROIHeads),
    ],
)
def test_roi_heads_drop_background_on_ignored_boxes_only(name, cls):
    heads = _roi_heads(name)
    assert type(heads) is cls and cls.supports_ignored_boxes and heads.ignore_iou == 0.3
    gt = _gt([VALID, IGNORED, IGNORED_FG], [2, 1, 0], ignore=[False, True, True])
    with EventStorage() as storage:
        (sampled,) = heads.label_and_sample_proposals([_proposals(ROI_PROPOSALS)], [gt])
        assert storage.latest()["roi_head/num_ignored_bg_samples"][0] == 1.0
    bg = NUM_CLASSES
    # VALID itself is appended as a proposal; IGNORED and IGNORED_FG are not. A_IGNORED is gone.
    assert _as_set(sampled) == {
        (tuple(VALID), 2), (tuple(P_FG1), 2), (tuple(P_FG2), 2),
        (tuple(A_NEAR), bg), (tuple(A_FAR), bg), (tuple(P_BG_SIDE), bg),
    }
    fg = sampled.gt_classes == 2
    assert sampled.gt_boxes.tensor[fg].tolist() == [VALID] * 3
    assert not sampled.has("gt_ignore")

    # The same boxes simply absent: A_IGNORED is sampled as background.
    with EventStorage():
        (sampled,) = heads.label_and_sample_proposals(
            [_proposals(ROI_PROPOSALS)], [_gt([VALID], [2], ignore=[False])]
        )
    assert (tuple(A_IGNORED), bg) in _as_set(sampled) and len(sampled) == 7


def test_roi_heads_image_with_only_ignored_boxes():
    heads = _roi_heads("SNIPERStandardROIHeads")
    gt = _gt([IGNORED], [1], ignore=[True])
    with EventStorage():
        (sampled,) = heads.label_and_sample_proposals([_proposals(ROI_PROPOSALS)], [gt])
    # Nothing appended, every proposal background, the one on IGNORED dropped.
    assert _as_set(sampled) == {(tuple(b), NUM_CLASSES) for b in ROI_PROPOSALS if b != A_IGNORED}


def test_roi_heads_without_gt_ignore_are_bit_identical_to_stock():
    g = torch.Generator().manual_seed(5)
    gts = [_random_gt(g, 3), _random_gt(g, 0), _random_gt(g, 6)]
    proposals = []
    for _ in gts:
        p = _proposals(_random_gt(g, 120).gt_boxes.tensor)
        p.objectness_logits = torch.rand(len(p), generator=g)
        proposals.append(p)
    torch.manual_seed(0)
    stock = _roi_heads("StandardROIHeads")
    torch.manual_seed(0)
    sniper = _roi_heads("SNIPERStandardROIHeads")
    with EventStorage():
        torch.manual_seed(1)
        ref = stock.label_and_sample_proposals(proposals, gts)
        torch.manual_seed(1)
        out = sniper.label_and_sample_proposals(proposals, gts)
    for a, b in zip(ref, out):
        assert a.get_fields().keys() == b.get_fields().keys()
        for k, v in a.get_fields().items():
            v2 = b.get(k)
            assert torch.equal(v.tensor, v2.tensor) if isinstance(v, Boxes) else torch.equal(v, v2)
    assert len(ref[0]) == 16 and (ref[0].gt_classes < NUM_CLASSES).any()  # sampled, with fg


# ------------------------------------------------------------------------- whole models


def _train_inputs(size=(96, 128)):
    torch.manual_seed(0)
    first = Instances(size)
    first.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 30.0, 28.0], [40.0, 20.0, 100.0, 90.0],
                                         [12.0, 8.0, 34.0, 30.0]]))
    first.gt_classes = torch.tensor([0, 1, 2])
    first.gt_ignore = torch.tensor([False, False, True])
    second = Instances(size)  # no valid box at all
    second.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 90.0, 80.0]]))
    second.gt_classes = torch.tensor([1])
    second.gt_ignore = torch.tensor([True])
    return [{"image": torch.rand(3, *size) * 255, "instances": inst} for inst in (first, second)]


def _sniper_cfg(name, make_cfg):
    cfg = make_cfg()
    if name == "compact_cfg":  # the built-in config: SNIPERRPN and SNIPERStandardROIHeads already
        assert (cfg.MODEL.PROPOSAL_GENERATOR.NAME, cfg.MODEL.ROI_HEADS.NAME) == ("SNIPERRPN", "SNIPERStandardROIHeads")
    else:
        cfg.MODEL.PROPOSAL_GENERATOR.NAME = "SNIPERRPN"
        cfg.MODEL.ROI_HEADS.NAME = "SNIPERRes5ROIHeads"
    return cfg


@pytest.mark.parametrize(
    "make_cfg, heads_cls",
    [("compact_cfg", SNIPERStandardROIHeads),
     pytest.param("r18_c4_cfg", SNIPERRes5ROIHeads, marks=pytest.mark.slow)],
)
def test_model_trains_with_ignored_boxes(request, make_cfg, heads_cls):
    torch.manual_seed(0)
    model = build_model(_sniper_cfg(make_cfg, request.getfixturevalue(make_cfg)))
    assert type(model.proposal_generator) is SNIPERRPN and type(model.roi_heads) is heads_cls
    model.train()
    with EventStorage() as storage:
        losses = model(_train_inputs())
        assert "roi_head/num_ignored_bg_samples" in storage.latest()
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values())
    total.backward()
    assert model.proposal_generator.rpn_head.objectness_logits.weight.grad.abs().sum() > 0
