from .chip_sampler import ChipEpochSampler
from .dataset_checks import (
    DatasetError,
    check_config_datasets,
    check_evaluable,
    check_num_classes,
    clip_and_drop_boxes,
    num_classes_key,
    validate_dataset,
)
from .own_datasets import (
    add_register_coco_argument,
    register_coco_datasets,
    tool_config_and_dataset,
    warn_dense_scenes,
)
from .sniper_chips import chip_box_validity, negative_chips, positive_chips
from .sniper_loader import SNIPERDatasetMapper, build_sniper_train_loader
from .sniper_records import load_negative_chips, sniper_chip_records
from .sniper_mining import mine_negative_chips
from .synthetic import (
    SYNTHETIC_SPLITS,
    dataset_statistics,
    default_data_root,
    ensure_split,
    generate_synthetic_split,
    register_synthetic_datasets,
)
from .synthetic_render import SYNTHETIC_CATEGORIES

__all__ = [
    "DatasetError",
    "check_config_datasets",
    "check_evaluable",
    "check_num_classes",
    "clip_and_drop_boxes",
    "num_classes_key",
    "validate_dataset",
    "add_register_coco_argument",
    "register_coco_datasets",
    "tool_config_and_dataset",
    "warn_dense_scenes",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_SPLITS",
    "dataset_statistics",
    "default_data_root",
    "ensure_split",
    "generate_synthetic_split",
    "register_synthetic_datasets",
    "positive_chips",
    "negative_chips",
    "chip_box_validity",
    "sniper_chip_records",
    "load_negative_chips",
    "SNIPERDatasetMapper",
    "ChipEpochSampler",
    "build_sniper_train_loader",
    "mine_negative_chips",
]
