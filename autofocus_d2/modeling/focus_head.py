"""The FocusPixel head: its registry, the default head and its loss."""
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.utils.registry import Registry
from torch import nn

from ..config import lookup_registry
from ..config_checks import check_at_least

__all__ = [
    "FOCUS_HEAD_REGISTRY",
    "StandardFocusHead",
    "build_focus_head",
    "focus_pixel_loss",
    "resolve_focus_feature",
]

FOCUS_HEAD_REGISTRY = Registry("FOCUS_HEAD")
FOCUS_HEAD_REGISTRY.__doc__ = """
Registry for FocusPixel heads. A head is called as ``head(feature)`` on one backbone feature map
(B, C, H, W) and returns FocusPixel logits (B, 2, H, W) on the same grid: channel 1 is "FocusPixel".
Registered classes are built as ``cls(cfg, input_shape)`` with ``input_shape`` the feature's ShapeSpec.
"""

DEFAULT_FOCUS_STRIDE = 16


def resolve_focus_feature(cfg_name: str, output_shape: Dict[str, ShapeSpec]) -> str:
    """The backbone feature the head reads: ``cfg_name`` or, if empty, the one of stride 16."""
    if cfg_name:
        if cfg_name not in output_shape:
            raise ValueError(
                f"Invalid config MODEL.FOCUS_HEAD.IN_FEATURE: {cfg_name!r} is not a backbone output; "
                f"the backbone produces {sorted(output_shape)}"
            )
        return cfg_name
    candidates = [k for k, v in output_shape.items() if v.stride == DEFAULT_FOCUS_STRIDE]
    if not candidates:
        strides = {k: v.stride for k, v in output_shape.items()}
        raise ValueError(
            "MODEL.FOCUS_HEAD.IN_FEATURE is empty and the backbone has no stride-16 output "
            f"(it has {strides}); set MODEL.FOCUS_HEAD.IN_FEATURE to one of them"
        )
    return candidates[0]


@FOCUS_HEAD_REGISTRY.register()
class StandardFocusHead(nn.Module):
    """The official head: conv3x3 (``conv_dim``) + ReLU, conv1x1 (``conv_dim``) + ReLU, conv1x1 (2):
    FocusPixel logits per feature cell."""

    @configurable
    def __init__(self, *, in_channels: int, conv_dim: int = 256):
        """in_channels: of the feature map read; conv_dim: of the two hidden convs (both >= 1)."""
        super().__init__()
        check_at_least(in_channels, 1, "in_channels", integer=True)
        check_at_least(conv_dim, 1, "conv_dim", integer=True)
        self.conv = Conv2d(in_channels, conv_dim, kernel_size=3, padding=1, activation=F.relu)
        self.conv1x1 = Conv2d(conv_dim, conv_dim, kernel_size=1, activation=F.relu)
        self.predictor = Conv2d(conv_dim, 2, kernel_size=1)
        weight_init.c2_msra_fill(self.conv)
        weight_init.c2_msra_fill(self.conv1x1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {"in_channels": input_shape.channels, "conv_dim": cfg.MODEL.FOCUS_HEAD.CONV_DIM}

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """feature: (B, C, H, W) -> logits (B, 2, H, W)."""
        return self.predictor(self.conv1x1(self.conv(feature)))


def build_focus_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the head named by ``cfg.MODEL.FOCUS_HEAD.NAME`` from FOCUS_HEAD_REGISTRY."""
    head_cls = lookup_registry(FOCUS_HEAD_REGISTRY, cfg.MODEL.FOCUS_HEAD.NAME, "MODEL.FOCUS_HEAD.NAME")
    return head_cls(cfg, input_shape)


def focus_pixel_loss(logits: torch.Tensor, targets: List[torch.Tensor]) -> torch.Tensor:
    """
    Softmax cross-entropy over the non-ignored cells of a batch, averaged over those cells.

    Args:
        logits: (B, 2, H, W) FocusPixel logits.
        targets: B LongTensors (H, W) with labels in {1, 0, -1 (ignored)}.

    Returns:
        float32 scalar loss, also under mixed precision (fp16/bf16 autocast, Detectron2's
        AMPTrainer): the logits are cast to float32 first; 0 (with a gradient path) when no cell of
        the batch is valid, never NaN.
    """
    logits = logits.float()
    labels = torch.stack(targets).to(logits.device)
    valid = labels >= 0
    if not valid.any():
        return logits.sum() * 0.0
    flat = logits.permute(0, 2, 3, 1)[valid]  # (num_valid, 2)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(flat, labels[valid], reduction="mean")
