from .synthetic import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_SPLITS,
    dataset_statistics,
    default_data_root,
    ensure_split,
    generate_synthetic_split,
    register_synthetic_datasets,
)

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_SPLITS",
    "dataset_statistics",
    "default_data_root",
    "ensure_split",
    "generate_synthetic_split",
    "register_synthetic_datasets",
]
