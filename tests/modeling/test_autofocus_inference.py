"""AutoFocusRCNN in eval mode: `single` equals GeneralizedRCNN, outputs and efficiency statistics."""
import pytest
import torch
from detectron2.modeling import build_model

from autofocus_d2.evaluation import AutoFocusEfficiencyEvaluator, summarize_efficiency
from autofocus_d2.structures import ScaleChain
from autofocus_d2.structures.views import crop_and_resize


def cfg_for(compact_cfg, policy):
    return compact_cfg(CHIP_POLICY=policy, SCALES=[[320, 480], [-1, -1]])


def _sorted(instances):
    order = torch.argsort(instances.scores, descending=True)
    return instances.pred_boxes.tensor[order], instances.scores[order], instances.pred_classes[order]


def model_reference_and_image(cfg):
    """The AutoFocusRCNN of ``cfg`` (seed 0), Detectron2's GeneralizedRCNN with the same weights
    (all but the focus head), and a random 500 x 700 image (seed 1)."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    cfg = cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    reference = build_model(cfg).eval()
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("focus_head.")})
    torch.manual_seed(1)
    return model, reference, (torch.rand(3, 500, 700) * 255).round()


def test_single_scale_equals_generalized_rcnn_on_the_same_input(compact_cfg):
    cfg = cfg_for(compact_cfg, "single")
    cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX = 0.0  # the RPN's own top-k, as GeneralizedRCNN uses
    # Detectron2's own per-view output (the paper's raw detections + Soft-NMS differ by design).
    cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS, cfg.MODEL.AUTOFOCUS.NMS_METHOD = "filtered", "nms"
    model, reference, image = model_reference_and_image(cfg)
    resized = crop_and_resize(image, (0, 0, 700, 500), ScaleChain(scales=[[320, 480]]).image_hw((500, 700), 0))
    with torch.no_grad():
        ours = model([{"image": image}])[0]["instances"]
        theirs = reference.inference([{"image": resized, "height": 500, "width": 700}])[0]["instances"]
    assert len(ours) == len(theirs) > 0
    for a, b in zip(_sorted(ours), _sorted(theirs)):
        assert torch.allclose(a.float(), b.float(), atol=1e-3), (a, b)


def test_eval_outputs_carry_instances_and_statistics(compact_cfg):
    cfg = cfg_for(compact_cfg, "autofocus")
    cfg.MODEL.AUTOFOCUS.FOCUS_THRESHOLD = [0.0]  # random weights: make every cell focus
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 400, 600) * 255, "height": 200, "width": 300}])[0]
    assert out["instances"].image_size == (200, 300)
    stats = out["autofocus"]
    assert stats["chips_per_scale"] == [1, 1]
    assert stats["pixels_per_scale"] == stats["pyramid_pixels_per_scale"] == [320 * 480, 400 * 600]


def test_efficiency_evaluator_aggregates_over_images():
    outs = [
        {"autofocus": {"pixels_per_scale": [100, 50], "chips_per_scale": [1, 2],
                       "pyramid_pixels_per_scale": [100, 400], "chip_boxes_per_scale": [[], []]}},
        {"autofocus": {"pixels_per_scale": [100, 0], "chips_per_scale": [1, 0],
                       "pyramid_pixels_per_scale": [100, 400], "chip_boxes_per_scale": [[], []]}},
    ]
    evaluator = AutoFocusEfficiencyEvaluator(distributed=False)
    evaluator.reset()
    evaluator.process([{}, {}], outs)
    res = evaluator.evaluate()["autofocus_efficiency"]
    assert res["pixel_ratio"] == pytest.approx(250 / 1000)
    assert res["pixels_per_image"] == 125 and res["pyramid_pixels_per_image"] == 500
    assert res["chips_per_image"] == 1.0 and res["chips_scale1"] == 1.0
    assert res["pixel_ratio_scale1"] == pytest.approx(50 / 800)
    assert summarize_efficiency([]) == {}


def test_proposal_budget_scales_with_the_view_and_never_changes_the_rpn(compact_cfg):
    cfg = cfg_for(compact_cfg, "single")
    cfg.MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX = 200.0  # 320 x 480 px = 0.154 Mpix -> 31 -> at least 50
    cfg.MODEL.AUTOFOCUS.MIN_PROPOSALS = 50
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rpn = model.proposal_generator
    tables = (dict(rpn.pre_nms_topk), dict(rpn.post_nms_topk))
    seen = []

    def hook(module, inputs, outputs):  # hooks are shared with the pass twin: ``module`` is the twin
        seen.append((module is rpn, module.pre_nms_topk[False], module.post_nms_topk[False],
                     rpn.pre_nms_topk[False], rpn.post_nms_topk[False], len(outputs[0][0])))

    rpn.register_forward_hook(hook)
    with torch.no_grad():
        model([{"image": torch.rand(3, 500, 750) * 255}])
    # The pass ran on a twin capped at 50; the model's own RPN kept 1000 during the pass too.
    (is_rpn, pre, post, own_pre, own_post, count), = seen
    assert not is_rpn and (pre, post) == (50, 50) and count <= 50
    assert (own_pre, own_post) == (1000, 1000)
    assert (rpn.pre_nms_topk, rpn.post_nms_topk) == tables


def test_two_passes_with_other_settings_interleaved_on_one_model_give_their_own_results(compact_cfg):
    """What a second pipeline (or thread) on the same model does: a pass that starts while another
    is between its RPN and its ROI heads. With settings set on the shared heads the first pass
    would pick up the second's; with pass twins each keeps its own."""
    cfg = cfg_for(compact_cfg, "single")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.manual_seed(3)
    images = model.normalize([(torch.rand(3, 320, 480) * 255).round()])
    with torch.no_grad():
        alone_raw, _ = model.detect(images, with_focus=False, raw_score_thresh=0.001, max_proposals=60)
        alone_filtered, _ = model.detect(images, with_focus=False)
    inner, started = [], []

    def interleave(module, inputs, outputs):
        if not started:  # once: a filtered pass runs while the raw pass sits between RPN and ROI heads
            started.append(True)
            inner.append(model.detect(images, with_focus=False)[0])

    handle = model.proposal_generator.register_forward_hook(interleave)
    with torch.no_grad():
        outer_raw, _ = model.detect(images, with_focus=False, raw_score_thresh=0.001, max_proposals=60)
    handle.remove()
    for got, want in ((outer_raw[0], alone_raw[0]), (inner[0][0], alone_filtered[0])):
        assert len(got) == len(want)
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor) and torch.equal(got.scores, want.scores)
    assert len(alone_raw[0]) > 20 >= len(alone_filtered[0])


def test_raw_view_detections_switch_off_per_view_filtering_and_never_change_the_predictor(compact_cfg):
    cfg = cfg_for(compact_cfg, "single")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    predictor = model.roi_heads.box_predictor
    torch.manual_seed(3)
    image = (torch.rand(3, 320, 480) * 255).round()
    images = model.normalize([image])
    with torch.no_grad():
        filtered, _ = model.detect(images, with_focus=False)
        raw, _ = model.detect(images, with_focus=False, raw_score_thresh=0.001)
    assert len(filtered[0]) <= 20 and bool((filtered[0].scores >= 0.05).all())
    # Raw: every class score >= 0.001 of every proposal, no top-k, no NMS.
    assert len(raw[0]) > 20 and bool((raw[0].scores >= 0.001).all())
    # Every filtered detection is among the raw ones (NMS and top-k only remove).
    for box, cls in zip(filtered[0].pred_boxes.tensor, filtered[0].pred_classes):
        same = (raw[0].pred_classes == cls) & (raw[0].pred_boxes.tensor - box).abs().amax(dim=1).lt(1e-4)
        assert bool(same.any())
    assert (predictor.test_score_thresh, predictor.test_nms_thresh, predictor.test_topk_per_image) == (0.05, 0.5, 20)


@pytest.mark.slow  # 17 views, each also through GeneralizedRCNN (about 3 s)
def test_every_views_detections_equal_detectron2_on_that_views_pixels(compact_cfg):
    """Fixed weights and image, three scales, grid chips (1, 4 and 12 views, batches of up to 4
    equal shapes): each view's detections before stacking (the pipeline's
    ``detections_per_scale``, ORIGINAL frame) are GeneralizedRCNN's own inference on that view's
    pixels, mapped back by the view's box: view running, batching and frames change nothing."""
    cfg = compact_cfg(CHIP_POLICY="grid", GRID_TILE_SIZE=256, SCALES=[[192, 288], [320, 480], [-1, -1]],
                      VALID_RANGES=[[0.0, -1.0]] * 3, CHIP_BATCH_SIZE=4, MAX_BATCH_PADDING=0.0,
                      PROPOSALS_PER_MPIX=0.0, VIEW_DETECTIONS="filtered", NMS_METHOD="nms")
    model, reference, image = model_reference_and_image(cfg)
    with torch.no_grad():
        out = model.pipeline(model, [{"image": image}], with_details=True)[0]
    details = out["autofocus_details"]
    assert [len(v) for v in details["views_per_scale"]] == out["autofocus"]["chips_per_scale"]
    assert all(n > 0 for n in out["autofocus"]["chips_per_scale"])  # chips at every finer scale
    compared = 0
    for views, dets in zip(details["views_per_scale"], details["detections_per_scale"]):
        for view, ours in zip(views, dets):
            (x0, y0, x1, y1), (h, w) = view.box, view.out_hw
            with torch.no_grad():
                theirs = reference.inference(
                    [{"image": crop_and_resize(image, view.box, view.out_hw), "height": h, "width": w}]
                )[0]["instances"]
            boxes = theirs.pred_boxes.tensor * torch.tensor([(x1 - x0) / w, (y1 - y0) / h] * 2)
            boxes += torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
            assert len(ours) == len(theirs) > 0
            order_ours, order_theirs = torch.argsort(ours.scores), torch.argsort(theirs.scores)
            assert torch.allclose(ours.scores[order_ours], theirs.scores[order_theirs], atol=1e-4)
            assert torch.allclose(ours.pred_boxes.tensor[order_ours], boxes[order_theirs], atol=1e-2)
            assert torch.equal(ours.pred_classes[order_ours], theirs.pred_classes[order_theirs])
            compared += 1
    assert compared == sum(out["autofocus"]["chips_per_scale"]) == 1 + 4 + 12
