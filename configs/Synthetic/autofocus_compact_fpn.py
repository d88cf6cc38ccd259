# LazyConfig twin of autofocus_compact_fpn.yaml: the small CPU model of the built-in dataset
# (compact ResNet-FPN with BatchNorm, from random init), trained on SNIPER chips. Train with
#   python lazyconfig_train_net.py --config-file configs/Synthetic/autofocus_compact_fpn.py
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from autofocus_d2.modeling.compact_resnet import compact_resnet, compact_resnet_fpn

from ..common.data.autofocus import dataloader
from ..common.models.autofocus_rcnn_fpn import model

model.backbone = L(compact_resnet_fpn)(
    bottom_up=L(compact_resnet)(
        stem_out_channels=16,
        stage_out_channels=[32, 64, 128, 256],
        blocks_per_stage=[1, 1, 1, 1],
        out_features=["res2", "res3", "res4", "res5"],
        norm="BN",
        freeze_at=0,
    ),
    in_features=["res2", "res3", "res4", "res5"],
    out_channels=64,
)
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 1000)
model.proposal_generator.post_nms_topk = (500, 1000)
model.roi_heads.num_classes = 6
model.roi_heads.batch_size_per_image = 128
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.focus_head.in_channels = 64
model.focus_head.conv_dim = 64
model.focus_loss_weight = 2.0
model.focus_small_min_frame = "next_scale"
model.pipeline.scale_chain.scales = [[512, 768], [-1, -1]]
model.pipeline.policy.thresholds = [0.3]
model.pipeline.policy.dilations = [5]
model.pipeline.policy.min_sizes = [64.0]
model.pipeline.valid_ranges = [[-1.0, -1.0], [-1.0, -1.0]]
model.pipeline.small_drop_size = 64.0
model.pipeline.proposals_per_mpix = 500.0
model.pipeline.min_proposals = 100

dataloader.train.cfg.config_file.name = "Synthetic/autofocus_compact_fpn.yaml"
dataloader.train.dataset.names = "autofocus_synth_train"
dataloader.test.dataset.names = "autofocus_synth_val"
dataloader.test.num_workers = 2

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.01
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[450, 560]),
    warmup_length=50 / 560,
    warmup_method="linear",
    warmup_factor=0.001,
)
train = get_config("common/train.py").train
train.max_iter = 560
train.device = "cpu"
train.output_dir = "./output/synth_compact_fpn_lazy"
train.checkpointer.period = 560
train.eval_period = 0
