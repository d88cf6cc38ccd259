"""Retrofit (MODEL.FOCUS_HEAD.TRAIN_ONLY): only the FocusPixel head trains; the detector's
state_dict, BatchNorm statistics included, stays bit-identical; stock checkpoints load."""
import itertools
import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import SimpleTrainer
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from autofocus_d2.modeling import AutoFocusRCNN

DETECTOR_LOSSES = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}


def retrofit_cfg(compact_cfg, train_only: bool, meta_arch: str = "AutoFocusRCNN"):
    cfg = compact_cfg()
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    cfg.MODEL.FOCUS_HEAD.TRAIN_ONLY = train_only
    return cfg


def fixed_batch():
    """Two 128x160 images, each with one small box (FocusPixels) and one large box."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        inst = Instances((128, 160))
        inst.gt_boxes = Boxes(torch.tensor([[20.0, 24.0, 44.0, 50.0], [60.0, 10.0, 150.0, 120.0]]))
        inst.gt_classes = torch.tensor([0, 3])
        batch.append({"image": torch.rand(3, 128, 160, generator=g) * 255, "instances": inst})
    return batch


def detector_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("focus_head.")}


def focus_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("focus_head.")}


def assert_detector_unchanged(before, model):
    after = detector_state(model)
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []


def test_retrofit_trains_only_the_head_and_leaves_the_detector_bit_identical(compact_cfg):
    torch.manual_seed(0)
    cfg = retrofit_cfg(compact_cfg, train_only=True)
    cfg.SOLVER.BASE_LR = 0.02
    model = build_model(cfg)
    assert isinstance(model, AutoFocusRCNN) and model.focus_train_only
    frozen = [n for n, p in model.named_parameters() if not n.startswith("focus_head.")]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen and all(n.startswith("focus_head.") for n in trainable)
    assert len(trainable) == len(focus_state(model)) == 6  # 3 convs: weight + bias each
    # The BatchNorm layers whose statistics would move in train mode.
    bn = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn

    model.train()
    assert model.training and model.focus_head.training
    assert not any(m.training for n, m in model.named_modules() if n and not n.startswith("focus_head"))
    batch = fixed_batch()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_focus"}
    first = losses["loss_focus"].item()

    before, head_before = detector_state(model), focus_state(model)
    optimizer = build_optimizer(cfg, model)  # Detectron2's builder skips requires_grad=False
    opt_params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert opt_params == {id(p) for p in model.focus_head.parameters()}
    trainer = SimpleTrainer(model, itertools.repeat(batch), optimizer)
    trainer.train(0, 15)

    assert_detector_unchanged(before, model)
    head_after = focus_state(model)
    assert all(not torch.equal(head_before[k], head_after[k]) for k in head_before)
    with EventStorage():
        last = model(batch)["loss_focus"].item()
    assert last < 0.8 * first, (first, last)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("focus_head."))


def test_train_mode_toggles_keep_the_detector_in_eval_mode(compact_cfg):
    model = build_model(retrofit_cfg(compact_cfg, train_only=True))
    model.eval()
    assert not model.training and not model.focus_head.training
    model.train()
    assert model.focus_head.training and not model.backbone.training
    assert not model.proposal_generator.training and not model.roi_heads.training
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_switch_off_keeps_joint_training(compact_cfg):
    torch.manual_seed(0)
    model = build_model(retrofit_cfg(compact_cfg, train_only=False)).train()
    assert not model.focus_train_only
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())
    before = detector_state(model)
    with EventStorage():
        losses = model(fixed_batch())
    assert set(losses) == DETECTOR_LOSSES | {"loss_focus"}
    sum(losses.values()).backward()
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0
    # Train mode moves BatchNorm statistics: what the retrofit must (and does) prevent.
    after = detector_state(model)
    assert any(k.endswith("running_mean") and not torch.equal(before[k], after[k]) for k in before)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_plain_generalized_rcnn_checkpoint_loads_with_the_switch_on(compact_cfg, tmp_path):
    torch.manual_seed(3)
    plain = build_model(retrofit_cfg(compact_cfg, train_only=False, meta_arch="GeneralizedRCNN"))
    assert type(plain) is GeneralizedRCNN
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    cfg = retrofit_cfg(compact_cfg, train_only=True)
    cfg.MODEL.WEIGHTS = str(tmp_path / "plain.pth")
    torch.manual_seed(4)
    model = build_model(cfg)
    records = _Records()
    log = logging.getLogger("fvcore.common.checkpoint")
    log.addHandler(records)
    try:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    finally:
        log.removeHandler(records)
    missing = [m for m in records.messages if "not found in the checkpoint" in m]
    assert len(missing) == 1 and "focus_head" in missing[0]
    assert not any("not used by the model" in m for m in records.messages)  # no unexpected keys
    expected = plain.state_dict()
    loaded = detector_state(model)
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # Loading keeps the retrofit freeze (load_state_dict copies into the frozen tensors).
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "focus_head." + n for n, _ in model.focus_head.named_parameters()
    ]


@pytest.mark.slow
def test_train_net_retrofits_from_a_plain_checkpoint(compact_cfg, tmp_path):
    import train_net

    torch.manual_seed(5)
    plain = build_model(retrofit_cfg(compact_cfg, train_only=False, meta_arch="GeneralizedRCNN"))
    DetectionCheckpointer(plain, save_dir=str(tmp_path)).save("plain")
    cfg = retrofit_cfg(compact_cfg, train_only=True)
    cfg.merge_from_list([
        "MODEL.WEIGHTS", str(tmp_path / "plain.pth"),
        "DATASETS.TRAIN", ("autofocus_synth_tiny",), "DATASETS.TEST", (),
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 4,
        "SOLVER.WARMUP_ITERS", 1, "SOLVER.STEPS", (), "SOLVER.CHECKPOINT_PERIOD", 1000,
        "OUTPUT_DIR", str(tmp_path / "out"), "SEED", 7,
    ])
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    head_before = focus_state(trainer.model)
    trainer.train()
    assert_detector_unchanged(plain.state_dict(), trainer.model)
    head_after = focus_state(trainer.model)
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)
    # One loss (loss_focus): Detectron2's trainer logs it as total_loss only.
    logged = set(trainer.storage.histories())
    assert "total_loss" in logged and not (DETECTOR_LOSSES & logged)
    assert len(trainer.storage.history("total_loss").values()) == 4


@pytest.mark.parametrize(
    "value, weight, match",
    [("yes", 1.0, "MODEL.FOCUS_HEAD.TRAIN_ONLY"), (True, 0.0, "MODEL.FOCUS_HEAD.LOSS_WEIGHT")],
)
def test_bad_retrofit_config_raises_naming_the_key(compact_cfg, value, weight, match):
    cfg = retrofit_cfg(compact_cfg, train_only=False)
    cfg.MODEL.FOCUS_HEAD.TRAIN_ONLY = value
    cfg.MODEL.FOCUS_HEAD.LOSS_WEIGHT = weight
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_retrofit_without_weights_warns(compact_cfg):
    records = _Records()
    log = logging.getLogger("autofocus_d2.modeling.focus_detector")
    log.addHandler(records)
    try:
        build_model(retrofit_cfg(compact_cfg, train_only=True))
    finally:
        log.removeHandler(records)
    assert any("MODEL.WEIGHTS is empty" in m for m in records.messages)
