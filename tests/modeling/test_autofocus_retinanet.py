"""AutoFocusRetinaNet: RetinaNet's losses plus loss_focus, `single` equals RetinaNet, raw passes,
SNIPER's ignored boxes in the anchor labels, config errors."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import RetinaNet, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from autofocus_d2 import add_autofocus_config
from autofocus_d2.structures import ScaleChain
from autofocus_d2.structures.views import crop_and_resize
from autofocus_d2 import model_zoo
from autofocus_d2.modeling import AutoFocusRetinaNet


def compact_cfg(**opts):
    cfg = model_zoo.get_config("Synthetic/autofocus_compact_retinanet.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.AUTOFOCUS.SCALES = [[320, 480], [-1, -1]]
    for key, value in opts.items():
        cfg.merge_from_list([key.replace("__", "."), value])
    return cfg


def r18_retinanet_cfg():
    """Detectron2's own RetinaNet backbone (ResNet-FPN with p6/p7 convs: p3-p7, strides 8-128)."""
    cfg = get_cfg()
    add_autofocus_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "AutoFocusRetinaNet"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    cfg.MODEL.FOCUS_HEAD.CONV_DIM = 32
    return cfg


def _inputs(n=2, size=(96, 128), ignore=False):
    torch.manual_seed(0)
    batch = []
    for _ in range(n):
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 30.0, 28.0], [40.0, 20.0, 100.0, 90.0]]))
        inst.gt_classes = torch.tensor([0, 1])
        if ignore:
            inst.gt_ignore = torch.tensor([False, True])
        batch.append({"image": torch.rand(3, *size) * 255, "instances": inst})
    return batch


def _plain_retinanet(cfg, model):
    """Detectron2's RetinaNet from the same config, with ``model``'s weights (no focus head)."""
    cfg = cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    plain = build_model(cfg)
    assert type(plain) is RetinaNet
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("focus_head.")})
    return plain.train(model.training)


def _spread_scores(model, seed=5):
    """Random-init RetinaNet scores all sit at the prior (0.01); spread them so that detections
    pass a threshold and have distinct scores."""
    torch.manual_seed(seed)
    with torch.no_grad():
        model.head.cls_score.weight.normal_(0.0, 0.3)
        model.head.cls_score.bias.fill_(-2.0)


def _sorted(instances):
    order = torch.argsort(instances.scores, descending=True)
    return instances.pred_boxes.tensor[order], instances.scores[order], instances.pred_classes[order]


@pytest.mark.parametrize("make_cfg", [compact_cfg, r18_retinanet_cfg])
def test_stride16_focus_feature_and_training_losses_equal_retinanet_plus_focus(make_cfg):
    cfg = make_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert isinstance(model, AutoFocusRetinaNet)
    assert model.focus_in_feature == "p4" and model.focus_stride == 16
    plain = _plain_retinanet(cfg, model)
    with EventStorage():
        losses = model(_inputs())
        reference = plain(_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_focus"}
    for key in ("loss_cls", "loss_box_reg"):
        assert torch.allclose(losses[key], reference[key], rtol=1e-5), key
    assert torch.isfinite(losses["loss_focus"]) and losses["loss_focus"] > 0
    sum(losses.values()).backward()
    assert model.focus_head.predictor.weight.grad.abs().sum() > 0
    assert model.head.cls_score.weight.grad.abs().sum() > 0


def test_detectron2_retinanet_backbone_has_p3_to_p7():
    model = build_model(r18_retinanet_cfg())
    strides = {k: v.stride for k, v in model.backbone.output_shape().items()}
    assert strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


def test_single_policy_equals_plain_retinanet_on_the_same_input():
    cfg = compact_cfg(MODEL__AUTOFOCUS__CHIP_POLICY="single")
    # Detectron2's own per-view output (the paper's raw detections + Soft-NMS differ by design).
    cfg.MODEL.AUTOFOCUS.VIEW_DETECTIONS, cfg.MODEL.AUTOFOCUS.NMS_METHOD = "filtered", "nms"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _spread_scores(model)
    plain = _plain_retinanet(cfg, model)

    torch.manual_seed(1)
    image = (torch.rand(3, 500, 700) * 255).round()
    resized = crop_and_resize(image, (0, 0, 700, 500), ScaleChain(scales=[[320, 480]]).image_hw((500, 700), 0))
    with torch.no_grad():
        ours = model([{"image": image}])[0]["instances"]
        theirs = plain([{"image": resized, "height": 500, "width": 700}])[0]["instances"]
    assert ours.image_size == theirs.image_size == (500, 700)
    assert 10 < len(ours) == len(theirs) <= 100
    for a, b in zip(_sorted(ours), _sorted(theirs)):
        assert torch.allclose(a.float(), b.float(), atol=1e-3), (a, b)


def test_raw_score_thresh_gives_raw_detections_and_never_changes_the_model():
    cfg = compact_cfg(MODEL__RETINANET__SCORE_THRESH_TEST=0.05, TEST__DETECTIONS_PER_IMAGE=20)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _spread_scores(model)
    torch.manual_seed(3)
    images = model.normalize([(torch.rand(3, 320, 480) * 255).round()])
    with torch.no_grad():
        filtered, focus = model.detect(images, with_focus=True)
        raw, none = model.detect(images, with_focus=False, raw_score_thresh=0.3)
        features = model.backbone(images.tensor)
        logits, _ = model.head([features[f] for f in model.head_in_features])
    assert focus.shape == (1, 320 // 16, 480 // 16) and none is None
    assert len(filtered[0]) == 20 and bool((filtered[0].scores > 0.05).all())
    # Raw: every (anchor, class) score above 0.3, at most TOPK_CANDIDATES_TEST per level, no NMS
    # and no per-image top-k.
    expected = sum(min(1000, int((x.sigmoid() > 0.3).sum())) for x in logits)
    assert 20 < len(raw[0]) == expected and bool((raw[0].scores > 0.3).all())
    # Boxes are clipped to the view.
    b = raw[0].pred_boxes.tensor
    assert bool((b[:, 0::2] >= 0).all() & (b[:, 0::2] <= 480).all() & (b[:, 1::2] >= 0).all() & (b[:, 1::2] <= 320).all())
    def settings():
        return (model.test_score_thresh, model.test_nms_thresh, model.max_detections_per_image,
                model.test_topk_candidates)

    assert settings() == (0.05, 0.5, 20, 1000)  # the raw pass ran on a twin; the model is unchanged
    seen = []
    forward_inference = type(model).forward_inference

    def spy(self, *args, **kwargs):  # on the class: called with the pass twin as self
        seen.append((self is model, self.test_score_thresh, settings()))
        return forward_inference(self, *args, **kwargs)

    type(model).forward_inference = spy
    try:
        with torch.no_grad():
            model.detect(images, raw_score_thresh=0.001)
    finally:
        type(model).forward_inference = forward_inference
    assert seen == [(False, 0.001, (0.05, 0.5, 20, 1000))]


def test_ignored_boxes_give_ignore_labels_to_the_anchors_they_overlap():
    model = build_model(compact_cfg(MODEL__SNIPER__IGNORE_IOU=0.3))
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [100, 100, 120, 120]])),
               Boxes(torch.tensor([[0.0, 0, 50, 50], [98, 98, 126, 126]]))]
    gt = Instances((200, 200))
    gt.gt_boxes = Boxes(torch.tensor([[20.0, 20, 40, 40], [100, 100, 121, 121]]))
    gt.gt_classes = torch.tensor([2, 0])
    gt.gt_ignore = torch.tensor([False, True])
    labels, matched = model.label_anchors(anchors, [gt])
    # 6 = background; anchor 2 (IoU 0.907) and anchor 4 (IoU 441/784 = 0.5625) overlap the ignored box.
    assert labels[0].tolist() == [6, 2, -1, 6, -1]
    assert matched[0][1].tolist() == [20.0, 20.0, 40.0, 40.0]
    # Without gt_ignore: RetinaNet's own labels (the second box is then an object of class 0).
    gt.remove("gt_ignore")
    ours, _ = model.label_anchors(anchors, [gt])
    theirs, _ = RetinaNet.label_anchors(model, anchors, [gt])
    assert ours[0].tolist() == theirs[0].tolist() == [6, 2, 0, 6, 0]


def test_sniper_chips_with_ignored_boxes_train_and_ground_truth_is_required():
    model = build_model(compact_cfg()).train()
    with EventStorage():
        losses = model(_inputs(ignore=True))
        assert all(torch.isfinite(v) for v in losses.values())
        batch = _inputs()
        del batch[1]["instances"]
        with pytest.raises(ValueError, match="needs 'instances'"):
            model(batch)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX", 500.0, "MODEL.AUTOFOCUS.PROPOSALS_PER_MPIX.*one-stage"),
        ("MODEL.FOCUS_HEAD.IN_FEATURE", "res4", "MODEL.FOCUS_HEAD.IN_FEATURE.*res4"),
        ("MODEL.SNIPER.IGNORE_IOU", 0.0, "MODEL.SNIPER.IGNORE_IOU"),
        ("MODEL.AUTOFOCUS.NMS_METHOD", "greedy", "MODEL.AUTOFOCUS.NMS_METHOD"),
    ],
)
def test_bad_config_values_name_the_key(key, value, match):
    cfg = compact_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_max_proposals_is_refused_and_eval_without_pipeline_is_retinanet():
    cfg = compact_cfg()
    model = build_model(cfg).eval()
    images = model.normalize([torch.zeros(3, 64, 64)])
    with pytest.raises(ValueError, match="no proposals.*PROPOSALS_PER_MPIX"):
        model.detect(images, max_proposals=300)
    _spread_scores(model)
    plain = _plain_retinanet(cfg, model)
    model.pipeline = None
    inputs = [{"image": (torch.rand(3, 160, 224) * 255).round()}]
    with torch.no_grad():
        ours, theirs = model(inputs)[0]["instances"], plain(inputs)[0]["instances"]
    assert len(ours) == len(theirs) > 0
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)


def test_stock_retinanet_weights_load_with_only_the_focus_head_missing():
    cfg = compact_cfg()
    model = build_model(cfg)
    plain = _plain_retinanet(cfg, model)
    incompatible = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(incompatible.missing_keys) == {k for k in model.state_dict() if k.startswith("focus_head.")}
    assert incompatible.missing_keys and not incompatible.unexpected_keys
