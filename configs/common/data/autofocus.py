# LazyConfig data of the AutoFocus Python configs. Training: SNIPER chips through Detectron2's own
# build_detection_train_loader over ``dataloader.train.dataset`` (Detectron2's usual
# ``dataloader.train.dataset.names=...`` override); the chip sampler reads its INPUT.SNIPER / SOLVER
# keys from the yaml named by ``dataloader.train.cfg.config_file`` (overridable with ``...cfg.opts``),
# the one place those settings live. Test: original images (AutoFocus resizes on the device), COCO AP.
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from autofocus_d2.config import load_autofocus_config
from autofocus_d2.data import build_sniper_train_loader
from autofocus_d2.evaluation import build_coco_evaluator
from autofocus_d2.model_zoo import get_config_file

dataloader = OmegaConf.create()
dataloader.train = L(build_sniper_train_loader)(
    cfg=L(load_autofocus_config)(
        config_file=L(get_config_file)(name="COCO-Detection/autofocus_R_50_FPN_1x.yaml"), opts=[]
    ),
    # The training images (instead of the yaml's DATASETS.TRAIN), as in Detectron2's LazyConfigs.
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train", filter_empty=True),
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=4,
)
dataloader.evaluator = L(build_coco_evaluator)(dataset_name="${..test.dataset.names}")
