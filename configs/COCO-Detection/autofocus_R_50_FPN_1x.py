# LazyConfig twin of autofocus_R_50_FPN_1x.yaml: AutoFocus Faster R-CNN R50-FPN on COCO 2017, the
# paper's scale chain, chip training and merge, Detectron2's 1x schedule. Train with
#   python lazyconfig_train_net.py --config-file configs/COCO-Detection/autofocus_R_50_FPN_1x.py
from detectron2.model_zoo import get_config

from ..common.data.autofocus import dataloader  # noqa: F401  (a config key)
from ..common.models.autofocus_rcnn_fpn import model

model.roi_heads.num_classes = 80

_common = "common/"
optimizer = get_config(_common + "optim.py").SGD
lr_multiplier = get_config(_common + "coco_schedule.py").lr_multiplier_1x
train = get_config(_common + "train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
