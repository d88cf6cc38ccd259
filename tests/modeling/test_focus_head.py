"""The FocusPixel head and its loss."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from autofocus_d2 import add_autofocus_config
from autofocus_d2.modeling import FOCUS_HEAD_REGISTRY, build_focus_head, focus_pixel_loss


def _cfg():
    cfg = get_cfg()
    add_autofocus_config(cfg)
    return cfg


def test_head_output_shape_and_structure():
    cfg = _cfg()
    cfg.MODEL.FOCUS_HEAD.CONV_DIM = 32
    head = build_focus_head(cfg, ShapeSpec(channels=12, stride=16))
    out = head(torch.randn(3, 12, 7, 9))
    assert out.shape == (3, 2, 7, 9)
    # The official head: conv3x3 + ReLU, conv1x1 + ReLU, conv1x1 to 2 classes.
    assert head.conv.weight.shape == (32, 12, 3, 3)
    assert head.conv1x1.weight.shape == (32, 32, 1, 1)
    assert head.predictor.weight.shape == (2, 32, 1, 1)
    assert head.conv.activation is F.relu and head.conv1x1.activation is F.relu
    assert "StandardFocusHead" in FOCUS_HEAD_REGISTRY


def test_unknown_head_name_is_named_in_the_error():
    cfg = _cfg()
    cfg.MODEL.FOCUS_HEAD.NAME = "NoSuchHead"
    with pytest.raises(ValueError, match="MODEL.FOCUS_HEAD.NAME.*NoSuchHead"):
        build_focus_head(cfg, ShapeSpec(channels=4, stride=16))


def test_loss_is_cross_entropy_over_valid_cells():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    targets = [torch.tensor([[0, 1]])]
    expected = (F.cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
                + F.cross_entropy(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))) / 2
    assert focus_pixel_loss(logits, targets).item() == pytest.approx(expected.item())


def test_ignored_cells_do_not_count():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])
    loss = focus_pixel_loss(logits, [torch.tensor([[0, -1]])])
    expected = F.cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert loss.item() == pytest.approx(expected.item())


def test_all_ignored_gives_zero_loss_with_gradient_not_nan():
    logits = torch.randn(2, 2, 3, 3, requires_grad=True)
    loss = focus_pixel_loss(logits, [torch.full((3, 3), -1), torch.full((3, 3), -1)])
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_image_without_valid_cells_contributes_nothing():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 3)
    t0 = torch.randint(0, 2, (3, 3))
    both = focus_pixel_loss(logits, [t0, torch.full((3, 3), -1)])
    alone = focus_pixel_loss(logits[:1], [t0])
    assert both.item() == pytest.approx(alone.item())


@pytest.mark.parametrize(
    "device, dtype",
    [("cpu", torch.bfloat16)]
    + ([("cuda", torch.float16), ("cuda", torch.bfloat16)] if torch.cuda.is_available() else []),
)
def test_loss_is_float32_under_mixed_precision(device, dtype):
    """Under autocast (what Detectron2's AMPTrainer runs) the head runs in low precision but its
    loss is computed in float32 and equals the float32 loss of the same logits."""
    head = build_focus_head(_cfg(), ShapeSpec(channels=8, stride=16)).to(device)
    feature = torch.randn(2, 8, 6, 7, generator=torch.Generator().manual_seed(0)).to(device)
    targets = [torch.randint(-1, 2, (6, 7), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.autocast(device_type=device, dtype=dtype):
        logits = head(feature)
        loss = focus_pixel_loss(logits, targets)
    assert logits.dtype == dtype and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(focus_pixel_loss(logits.float(), targets).item(), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
