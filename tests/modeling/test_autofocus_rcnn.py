"""AutoFocusRCNN: builds on C4 and FPN, trains with loss_focus, validates config, loads checkpoints."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from autofocus_d2.data import build_sniper_train_loader
from autofocus_d2.modeling import AutoFocusRCNN


def _inputs(n=2, size=(96, 128)):
    torch.manual_seed(0)
    batch = []
    for _ in range(n):
        inst = Instances(size)
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 30.0, 28.0], [40.0, 20.0, 100.0, 90.0]]))
        inst.gt_classes = torch.tensor([0, 1])
        batch.append({"image": torch.rand(3, *size) * 255, "instances": inst})
    return batch


@pytest.mark.parametrize(
    "make_cfg, feature", [("compact_cfg", "p4"), pytest.param("r18_c4_cfg", "res4", marks=pytest.mark.slow)]
)
def test_builds_and_trains_with_focus_loss(request, make_cfg, feature):
    cfg = request.getfixturevalue(make_cfg)()
    cfg.MODEL.FOCUS_HEAD.IN_FEATURE = ""  # auto: the stride-16 feature
    model = build_model(cfg)
    assert isinstance(model, AutoFocusRCNN)
    assert model.focus_in_feature == feature and model.focus_stride == 16
    model.train()
    with EventStorage():
        losses = model(_inputs())
    assert {"loss_focus", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.focus_head.predictor.weight.grad.abs().sum() > 0


def test_focus_loss_weight_scales_the_loss(compact_cfg):
    cfg = compact_cfg()
    torch.manual_seed(1)
    model = build_model(cfg).train()
    model.focus_loss_weight = 1.0
    with EventStorage():
        base = model(_inputs())["loss_focus"].item()
        model.focus_loss_weight = 2.5
        torch.manual_seed(1)
        assert model(_inputs())["loss_focus"].item() == pytest.approx(2.5 * base, rel=1e-5)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("MODEL.FOCUS_HEAD.IN_FEATURE", "p9", "MODEL.FOCUS_HEAD.IN_FEATURE.*p9"),
        ("MODEL.FOCUS_HEAD.SMALL_RANGE", [64.0, 5.0], "MODEL.FOCUS_HEAD.SMALL_RANGE"),
        ("MODEL.FOCUS_HEAD.IGNORE_MAX", 32.0, "MODEL.FOCUS_HEAD.IGNORE_MAX"),
        ("MODEL.AUTOFOCUS.SCALES", [[800, 1280], [480, 512]], "MODEL.AUTOFOCUS.SCALES.*coarse to fine"),
        ("MODEL.AUTOFOCUS.SCALES", [[800, 0]], "MODEL.AUTOFOCUS.SCALES"),
        ("MODEL.AUTOFOCUS.VIEW_DETECTIONS", "all", "MODEL.AUTOFOCUS.VIEW_DETECTIONS"),
        ("MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.NAME builds StandardROIHeads"),
        ("MODEL.AUTOFOCUS.VALID_RANGES", [[0.0, -1.0]], "MODEL.AUTOFOCUS.VALID_RANGES"),
        ("MODEL.AUTOFOCUS.FOCUS_THRESHOLD", [0.5, 0.5, 0.5], "MODEL.AUTOFOCUS.FOCUS_THRESHOLD"),
        ("MODEL.AUTOFOCUS.NMS_METHOD", "greedy", "MODEL.AUTOFOCUS.NMS_METHOD"),
        ("MODEL.SNIPER.IGNORE_IOU", 0.0, "MODEL.SNIPER.IGNORE_IOU"),
    ],
)
def test_bad_config_values_name_the_key(compact_cfg, key, value, match):
    cfg = compact_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("INPUT.SNIPER.VALID_RANGES", [[-1.0, -1.0]], "INPUT.SNIPER.VALID_RANGES: 1 ranges for 2 training scales"),
        ("INPUT.SNIPER.SCALES", [[800, 512]], "INPUT.SNIPER.SCALES"),
        ("INPUT.SNIPER.CHIP_STRIDE", 0, "INPUT.SNIPER.CHIP_STRIDE"),
        ("INPUT.SNIPER.NEGATIVES_PER_EPOCH", -0.5, "INPUT.SNIPER.NEGATIVES_PER_EPOCH"),
    ],
)
def test_bad_sniper_values_name_the_key_when_the_training_loader_is_built(compact_cfg, key, value, match):
    cfg = compact_cfg()
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError, match=match):
        build_sniper_train_loader(cfg)


def test_unknown_config_key_is_rejected(compact_cfg, tmp_path):
    cfg = compact_cfg()
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  AUTOFOCUS:\n    NO_SUCH_KEY: 1\n")
    with pytest.raises(KeyError, match="MODEL.AUTOFOCUS.NO_SUCH_KEY"):
        cfg.merge_from_file(str(bad))
    with pytest.raises(AssertionError, match="MODEL.FOCUS_HEAD.NO_SUCH_KEY"):
        cfg.merge_from_list(["MODEL.FOCUS_HEAD.NO_SUCH_KEY", 1])


def _load_weights(model, path):
    """Load a DetectionCheckpointer file through public APIs only (Detectron2's own checkpointer
    logs the missing keys instead of returning them); returns load_state_dict's incompatible keys.
    The shapes must match: load_state_dict raises otherwise."""
    DetectionCheckpointer(model).load(str(path))  # the user's path, as in train_net.py
    state = torch.load(str(path), map_location="cpu", weights_only=False)["model"]
    return model.load_state_dict(state, strict=False)


def test_stock_faster_rcnn_checkpoint_loads_with_only_focus_head_missing(compact_cfg, tmp_path):
    cfg = compact_cfg()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    stock = build_model(cfg)
    DetectionCheckpointer(stock, save_dir=str(tmp_path)).save("stock")

    cfg.MODEL.META_ARCHITECTURE = "AutoFocusRCNN"
    model = build_model(cfg)
    incompatible = _load_weights(model, tmp_path / "stock.pth")
    assert incompatible.missing_keys and all(k.startswith("focus_head.") for k in incompatible.missing_keys)
    assert set(incompatible.missing_keys) == {k for k in model.state_dict() if k.startswith("focus_head.")}
    assert not incompatible.unexpected_keys
    for k, v in stock.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_checkpoint_round_trip(compact_cfg, tmp_path):
    cfg = compact_cfg()
    torch.manual_seed(3)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    torch.manual_seed(4)
    other = build_model(cfg)
    incompatible = _load_weights(other, tmp_path / "model.pth")
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


class _ImageRecorder(EventStorage):
    """An EventStorage that records the names of the images put into it."""

    def __init__(self):
        super().__init__()
        self.image_names = []

    def put_image(self, img_name, img_tensor):
        self.image_names.append(img_name)
        super().put_image(img_name, img_tensor)


@pytest.mark.parametrize("vis_period, expected", [(1, 1), (0, 0)])
def test_training_keeps_detectron2s_vis_period_visualisation(compact_cfg, vis_period, expected):
    cfg = compact_cfg()
    cfg.VIS_PERIOD = vis_period
    model = build_model(cfg).train()
    with _ImageRecorder() as storage:
        losses = model(_inputs())
    assert "loss_focus" in losses and "loss_rpn_cls" in losses
    assert len(storage.image_names) == expected


def test_training_losses_are_generalized_rcnns_plus_the_focus_loss(compact_cfg):
    cfg = compact_cfg()
    model = build_model(cfg).train()
    inputs = _inputs()
    with EventStorage():
        torch.manual_seed(5)
        losses = model(inputs)
        torch.manual_seed(5)
        stock = GeneralizedRCNN.forward(model, inputs)  # Detectron2's own training pass
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
    assert set(losses) == set(stock) | {"loss_focus"}
    for key, value in stock.items():
        assert torch.equal(losses[key], value), key
    gt = [x["instances"] for x in inputs]
    focus = model.focus_loss_weight * model.focus_losses(features, gt, images.image_sizes)
    assert torch.allclose(losses["loss_focus"], focus)


def test_python_construction_for_sniper_chips_checks_the_heads(compact_cfg):
    cfg = compact_cfg()
    cfg.INPUT.SNIPER.ENABLED = False
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    args = AutoFocusRCNN.from_config(cfg)
    assert args["sniper_training"] is False
    AutoFocusRCNN(**args)  # whole-image training: stock heads are fine
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NAME builds StandardROIHeads"):
        AutoFocusRCNN(**{**AutoFocusRCNN.from_config(cfg), "sniper_training": True})
