"""A compact ResNet-FPN backbone that trains on a laptop CPU.

Detectron2's ``build_resnet_backbone`` fixes ResNet-18/34 to 64 channels in res2; this builder
assembles Detectron2's own ``BasicStem``/``BasicBlock``/``ResNet``/``FPN`` with narrower stages
(``MODEL.COMPACT_RESNET.*``), so only the widths are new.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

__all__ = ["build_compact_resnet_backbone", "build_compact_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_compact_resnet_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """ResNet with BasicBlocks and ``MODEL.COMPACT_RESNET`` widths; outputs res2..res5
    (strides 4, 8, 16, 32) as selected by ``MODEL.RESNETS.OUT_FEATURES``."""
    spec = cfg.MODEL.COMPACT_RESNET
    norm = cfg.MODEL.RESNETS.NORM
    widths = list(spec.STAGE_OUT_CHANNELS)
    depths = list(spec.BLOCKS_PER_STAGE)
    if len(widths) != 4 or len(depths) != 4:
        raise ValueError(
            "Invalid config MODEL.COMPACT_RESNET: STAGE_OUT_CHANNELS and BLOCKS_PER_STAGE need 4 "
            f"entries (res2..res5), got {widths} and {depths}"
        )
    stem = BasicStem(in_channels=input_shape.channels, out_channels=spec.STEM_OUT_CHANNELS, norm=norm)
    out_features = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    stages, in_channels = [], spec.STEM_OUT_CHANNELS
    for idx, (width, depth) in enumerate(zip(widths, depths)):
        first_stride = 1 if idx == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                depth,
                in_channels=in_channels,
                out_channels=width,
                stride_per_block=[first_stride] + [1] * (depth - 1),
                norm=norm,
            )
        )
        in_channels = width
        if f"res{idx + 2}" == max(out_features, key=lambda n: int(n[3:])):
            break
    return ResNet(stem, stages, out_features=out_features, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_compact_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """The compact ResNet under Detectron2's FPN (``MODEL.FPN.*``), with p6 from max-pooling."""
    return FPN(
        bottom_up=build_compact_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
