"""Pass twins: per-pass detector settings that leave the model as it is."""
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from autofocus_d2.modeling import capped_proposal_generator, pass_twin, raw_roi_heads


def test_pass_twin_shares_weights_and_hooks_and_sets_only_its_own_attributes():
    layer = nn.Linear(3, 2)
    layer.limit = 5
    calls = []
    layer.register_forward_hook(lambda m, i, o: calls.append(m.limit))
    twin = pass_twin(layer, limit=7)
    assert twin.weight is layer.weight and twin.bias is layer.bias
    assert (layer.limit, twin.limit) == (5, 7)
    x = torch.rand(4, 3)
    assert torch.equal(twin(x), layer(x)) and calls == [7, 5]
    with pytest.raises(AttributeError, match="Linear has no attribute 'limt'"):
        pass_twin(layer, limt=7)


def test_proposal_cap_never_raises_the_budget_and_needs_rpn_tables():
    rpn = nn.Module()
    rpn.pre_nms_topk, rpn.post_nms_topk = {True: 2000, False: 1000}, {True: 1000, False: 300}
    twin = capped_proposal_generator(rpn, 500)
    assert twin.pre_nms_topk == {True: 2000, False: 500} and twin.post_nms_topk == {True: 1000, False: 300}
    assert rpn.pre_nms_topk == {True: 2000, False: 1000}
    with pytest.raises(ValueError, match="PROPOSALS_PER_MPIX needs a proposal generator"):
        capped_proposal_generator(nn.Module(), 500)


def test_cascade_heads_raw_pass_reaches_every_stage_and_leaves_them_unchanged(compact_cfg):
    cfg = compact_cfg(CHIP_POLICY="single", SCALES=[[320, 480], [-1, -1]])
    cfg.INPUT.SNIPER.ENABLED = False  # Cascade's heads are not ignore-aware (no SNIPER chips)
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    predictors = list(model.roi_heads.box_predictor)
    assert len(predictors) == 3
    twin = raw_roi_heads(model.roi_heads, 0.001)
    assert [(p.test_score_thresh, p.test_nms_thresh, p.test_topk_per_image) for p in twin.box_predictor] == [
        (0.001, 1.0, -1)] * 3
    assert [(p.test_score_thresh, p.test_nms_thresh, p.test_topk_per_image) for p in predictors] == [
        (0.05, 0.5, 20)] * 3
    assert all(a.cls_score.weight is b.cls_score.weight for a, b in zip(twin.box_predictor, predictors))
    torch.manual_seed(3)
    images = model.normalize([(torch.rand(3, 320, 480) * 255).round()])
    with torch.no_grad():
        filtered, _ = model.detect(images, with_focus=False)
        raw, _ = model.detect(images, with_focus=False, raw_score_thresh=0.001)
    assert len(filtered[0]) <= 20 < len(raw[0]) and bool((raw[0].scores >= 0.001).all())
    assert list(model.roi_heads.box_predictor) == predictors
