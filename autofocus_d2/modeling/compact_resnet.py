"""A compact ResNet-FPN backbone that trains on a laptop CPU.

Detectron2's ``build_resnet_backbone`` fixes ResNet-18/34 to 64 channels in res2; this builder
assembles Detectron2's own ``BasicStem``/``BasicBlock``/``ResNet``/``FPN`` with narrower stages
(``MODEL.COMPACT_RESNET.*``), so only the widths are new.
"""
from typing import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

__all__ = [
    "build_compact_resnet_backbone",
    "build_compact_resnet_fpn_backbone",
    "compact_resnet",
    "compact_resnet_fpn",
]


def compact_resnet(
    *,
    in_channels: int = 3,
    stem_out_channels: int,
    stage_out_channels: Sequence[int],
    blocks_per_stage: Sequence[int],
    out_features: Sequence[str],
    norm: str = "BN",
    freeze_at: int = 0,
) -> ResNet:
    """ResNet of BasicBlocks with the given widths (res2..res5, strides 4, 8, 16, 32); stages after
    the deepest of ``out_features`` are not built. The LazyConfig entry of the compact backbone."""
    widths, depths = list(stage_out_channels), list(blocks_per_stage)
    if len(widths) != 4 or len(depths) != 4:
        raise ValueError(
            "Invalid config MODEL.COMPACT_RESNET: STAGE_OUT_CHANNELS and BLOCKS_PER_STAGE need 4 "
            f"entries (res2..res5), got {widths} and {depths}"
        )
    stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
    out_features = list(out_features)
    deepest = max(out_features, key=lambda n: int(n[3:]))
    stages, channels = [], stem_out_channels
    for idx, (width, depth) in enumerate(zip(widths, depths)):
        first_stride = 1 if idx == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                depth,
                in_channels=channels,
                out_channels=width,
                stride_per_block=[first_stride] + [1] * (depth - 1),
                norm=norm,
            )
        )
        channels = width
        if f"res{idx + 2}" == deepest:
            break
    return ResNet(stem, stages, out_features=out_features, freeze_at=freeze_at)


def compact_resnet_fpn(
    *,
    bottom_up: ResNet,
    in_features: Sequence[str],
    out_channels: int,
    norm: str = "",
    fuse_type: str = "sum",
) -> FPN:
    """Detectron2's FPN over ``bottom_up`` with p6 from max-pooling (the LazyConfig entry)."""
    return FPN(
        bottom_up=bottom_up,
        in_features=list(in_features),
        out_channels=out_channels,
        norm=norm,
        top_block=LastLevelMaxPool(),
        fuse_type=fuse_type,
    )


@BACKBONE_REGISTRY.register()
def build_compact_resnet_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """ResNet with BasicBlocks and ``MODEL.COMPACT_RESNET`` widths; outputs res2..res5
    (strides 4, 8, 16, 32) as selected by ``MODEL.RESNETS.OUT_FEATURES``."""
    spec = cfg.MODEL.COMPACT_RESNET
    return compact_resnet(
        in_channels=input_shape.channels,
        stem_out_channels=spec.STEM_OUT_CHANNELS,
        stage_out_channels=spec.STAGE_OUT_CHANNELS,
        blocks_per_stage=spec.BLOCKS_PER_STAGE,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        norm=cfg.MODEL.RESNETS.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@BACKBONE_REGISTRY.register()
def build_compact_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """The compact ResNet under Detectron2's FPN (``MODEL.FPN.*``), with p6 from max-pooling."""
    return compact_resnet_fpn(
        bottom_up=build_compact_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
