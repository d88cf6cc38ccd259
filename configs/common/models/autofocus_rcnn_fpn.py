# LazyConfig: AutoFocus on Faster R-CNN R50-FPN (the Python twin of configs/Base-AutoFocus.yaml with
# ResNet-50). Detectron2's own R50-FPN model of its LazyConfig zoo, turned into AutoFocusRCNN: the
# SNIPER-aware RPN / ROI heads, no mask branch, the FocusPixel head on p4 and the AutoFocus
# pipeline with the paper's scale chain, FocusChip settings and merge. Every value is explicit, so a
# user edits it in place (e.g. model.pipeline.scale_chain.scales = [...]); tests/test_lazy_configs.py
# checks that it builds the same model and pipeline as the yaml.
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from autofocus_d2.inference.chip_policies import AutoFocusChipPolicy
from autofocus_d2.inference.pipeline import CoarseToFinePipeline
from autofocus_d2.structures.scale_chain import ScaleChain
from autofocus_d2.modeling import AutoFocusRCNN, SNIPERRPN, SNIPERStandardROIHeads, StandardFocusHead

model = get_config("common/models/mask_rcnn_fpn.py").model
model._target_ = AutoFocusRCNN
model.proposal_generator._target_ = SNIPERRPN
model.proposal_generator.ignore_iou = 0.3  # MODEL.SNIPER.IGNORE_IOU
model.sniper_training = True  # INPUT.SNIPER.ENABLED: the heads must be ignore-aware
model.proposal_generator.pre_nms_topk = (2000, 1000)
model.proposal_generator.post_nms_topk = (1000, 1000)
model.roi_heads._target_ = SNIPERStandardROIHeads
model.roi_heads.ignore_iou = 0.3
for key in ("mask_in_features", "mask_pooler", "mask_head"):
    del model.roi_heads[key]

# The FocusPixel head (MODEL.FOCUS_HEAD) and its labels, in input-image pixels.
model.focus_head = L(StandardFocusHead)(in_channels=256, conv_dim=256)
model.focus_in_feature = "p4"
model.focus_loss_weight = 1.0
model.focus_small_range = (5.0, 64.0)
model.focus_small_min_frame = "input"  # MODEL.FOCUS_HEAD.SMALL_MIN_FRAME: the paper's rule
model.focus_ignore_max = 90.0
model.focus_ignore_ignored_boxes = False

# The coarse-to-fine pipeline (MODEL.AUTOFOCUS; see autofocus_d2/config.py for units).
model.pipeline = L(CoarseToFinePipeline)(
    policy=L(AutoFocusChipPolicy)(
        thresholds=[0.02, 0.2], dilations=[3, 3], min_sizes=[256.0, 320.0], max_chips=32
    ),
    scale_chain=L(ScaleChain)(scales=[[480, 512], [800, 1280], [1400, 2000]]),
    chip_batch_size=8,
    max_chip_side=2048,
    tile_overlap=128,
    border_margin=10.0,
    small_drop_size=0.0,
    valid_ranges=[[75.0, -1.0], [32.0, 180.0], [-1.0, 75.0]],
    nms_method="soft_nms",
    nms_thresh=0.5,
    proposals_per_mpix=0.0,
    min_proposals=300,
    soft_nms_sigma=0.55,
    detections_per_image=200,
    raw_score_thresh=0.001,
    max_batch_padding=0.1,
    inference_dtype="float32",
    max_batch_pixels=8_000_000,
)
