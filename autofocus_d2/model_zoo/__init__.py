"""autofocus-d2's model zoo: configs and released checkpoints, as ``detectron2.model_zoo``.

    from autofocus_d2 import model_zoo
    model = model_zoo.get("Synthetic/autofocus_compact_fpn.yaml", trained=True)

Releasing a checkpoint: ``tools/release_checkpoint.py`` (logic in :mod:`.release`).
"""
from .model_zoo import (
    MANIFEST_ENV,
    CheckpointFetchError,
    ChecksumMismatchError,
    ModelZooError,
    UnknownModelError,
    configs_dir,
    fetch_checkpoint,
    get,
    get_checkpoint,
    get_checkpoint_url,
    get_config,
    get_config_file,
    list_configs,
    load_manifest,
    manifest_path,
)

__all__ = [
    "MANIFEST_ENV",
    "CheckpointFetchError",
    "ChecksumMismatchError",
    "ModelZooError",
    "UnknownModelError",
    "configs_dir",
    "fetch_checkpoint",
    "get",
    "get_checkpoint",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "list_configs",
    "load_manifest",
    "manifest_path",
]
