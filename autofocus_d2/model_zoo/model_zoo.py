"""Configs and released checkpoints of autofocus-d2, with ``detectron2.model_zoo``'s interface.

A *name* is a config path relative to the repository's ``configs/`` directory, e.g.
``"Synthetic/autofocus_compact_fpn.yaml"`` or ``"COCO-Detection/autofocus_R_50_FPN_1x.yaml"``
(the ``.yaml`` may be left out).

Where the configs are found: the source tree's ``configs/`` first (a checkout or an editable install:
edits there take effect at once), then the copy a regular install ships as package data in
``autofocus_d2/model_zoo/configs`` (setup.py maps the top-level ``configs/`` directory onto that
package path, so there is no copy or symlink in the source tree to keep in sync).

The manifest (JSON) maps a name to its released checkpoint::

    {"Synthetic/autofocus_compact_fpn.yaml": {
        "url": "...", "sha256": "<64 hex>", "date": "2025-01-31", "schedule": "...",
        "metrics": {"AP": ..., "AP_small": ..., "pixel_ratio": ..., "images_per_s": ..., "device": ...}}}

It is, in order: the ``manifest`` argument, the file named by ``$AUTOFOCUS_MODEL_ZOO_MANIFEST``, or
the checked-in ``autofocus_d2/model_zoo/manifest.json``. A ``url`` is an ``http(s)://`` /
``ftp://`` URL, a ``file://`` URL, or a local path; a relative path is relative to the manifest's
directory. ``tools/release_checkpoint.py`` writes the entries.

Checkpoints are fetched through Detectron2's ``PathManager`` (iopath downloads a URL once into its
cache, ``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``). The sha256 of a fetched file is
checked the first time it is used; a marker ``<cache>/autofocus_d2/verified/<key>.json`` then
records the file's path, size and modification time, and later calls skip the hashing while those
three are unchanged. Delete that directory to force the check again.
"""
import hashlib
import json
import os
import pickle
import urllib.parse
import urllib.request
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir

from ..config import add_autofocus_config

__all__ = [
    "MANIFEST_ENV",
    "ModelZooError",
    "UnknownModelError",
    "CheckpointFetchError",
    "ChecksumMismatchError",
    "configs_dir",
    "list_configs",
    "get_config_file",
    "manifest_path",
    "load_manifest",
    "get_checkpoint_url",
    "fetch_checkpoint",
    "get_checkpoint",
    "get_config",
    "get",
    "check_weights_fit",
    "sha256_of_file",
]

MANIFEST_ENV = "AUTOFOCUS_MODEL_ZOO_MANIFEST"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MANIFEST = os.path.join(_PACKAGE_DIR, "manifest.json")
# A source checkout: <repo>/autofocus_d2/model_zoo/ -> <repo>/configs.
_SOURCE_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(_PACKAGE_DIR)), "configs")
# A regular install: the package data setup.py ships (see setup.py).
_INSTALLED_CONFIGS = os.path.join(_PACKAGE_DIR, "configs")
# Present in every configs/ directory of autofocus-d2: tells ours from another project's configs/.
_CONFIGS_MARKER = "Base-AutoFocus.yaml"
_REMOTE_SCHEMES = ("http", "https", "ftp")


class ModelZooError(RuntimeError):
    """Base class of the model zoo's errors; each message names the file and the fix."""


class UnknownModelError(ModelZooError):
    """A name that is not a config, or has no entry in the manifest."""


class CheckpointFetchError(ModelZooError):
    """A checkpoint that could not be downloaded or does not exist."""


class ChecksumMismatchError(ModelZooError):
    """A checkpoint whose sha256 differs from the manifest's."""


# ------------------------------------------------------------------------------------------ configs
def configs_dir() -> str:
    """The ``configs/`` directory in use: the source tree's, else the installed copy."""
    for d in (_SOURCE_CONFIGS, _INSTALLED_CONFIGS):
        if os.path.isfile(os.path.join(d, _CONFIGS_MARKER)):
            return d
    raise ModelZooError(
        f"No autofocus-d2 configs found: neither the source tree's {_SOURCE_CONFIGS} nor the "
        f"installed copy {_INSTALLED_CONFIGS} holds {_CONFIGS_MARKER}. Fix: reinstall the package "
        "(`pip install .` ships configs/ as package data) or use a source checkout."
    )


def list_configs() -> List[str]:
    """Every config name, sorted: the yacs ``.yaml`` configs (``Base-*.yaml`` included: they build
    too) and the LazyConfig ``.py`` ones (``common/*`` are their shared parts)."""
    root = configs_dir()
    names = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith((".yaml", ".py")) and not f.startswith("__"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)
                names.append(rel.replace(os.sep, "/"))
    return sorted(names)


def canonical_name(name: str) -> str:
    """``"A/b"`` or ``"A/b.yaml"`` -> ``"A/b.yaml"`` (``"A/b.py"`` stays); rejects absolute paths
    and ``..``."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"A model zoo name must be a non-empty string, got {name!r}")
    canon = name.strip().replace("\\", "/")
    parts = canon.split("/")
    if canon.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UnknownModelError(
            f"{name!r} is not a model zoo name: use a path relative to configs/, e.g. "
            "'Synthetic/autofocus_compact_fpn.yaml'"
        )
    return canon if canon.endswith((".yaml", ".py")) else canon + ".yaml"


def get_config_file(name: str) -> str:
    """The path of config ``name`` (relative to ``configs/``); UnknownModelError if it is not one."""
    canon = canonical_name(name)
    root = configs_dir()
    path = os.path.join(root, *canon.split("/"))
    if not os.path.isfile(path):
        raise UnknownModelError(
            f"{name!r} is not a config of the autofocus-d2 model zoo ({root}). "
            f"Available: {', '.join(list_configs())}"
        )
    return path


def get_config(name: str, trained: bool = False, *, manifest: Optional[str] = None):
    """
    Detectron2 config of ``name``: for a ``.yaml`` name a CfgNode with the AutoFocus keys
    (``add_autofocus_config``); for a ``.py`` name the LazyConfig (``detectron2.config.LazyConfig``:
    ``instantiate(cfg.model)`` builds the model), as Detectron2's own ``model_zoo.get_config``.

    Args:
        trained: set ``MODEL.WEIGHTS`` to the released checkpoint: unlike Detectron2, which stores
            the URL, the checkpoint is fetched and its sha256 checked now, and ``MODEL.WEIGHTS`` is
            the verified local file. False keeps the config's own ``MODEL.WEIGHTS`` (ImageNet
            weights for the COCO configs, none for the synthetic one).
        manifest: manifest file (see the module docstring for the default).
    """
    path = get_config_file(name)
    if path.endswith(".py"):
        cfg = LazyConfig.load(path)
        if trained:
            # A LazyConfig twin shares the checkpoint of its yaml (same model, same weights).
            cfg.train.init_checkpoint = get_checkpoint(name[: -len(".py")] + ".yaml", manifest=manifest)
        return cfg
    cfg = get_cfg()
    add_autofocus_config(cfg)
    cfg.merge_from_file(path)
    if trained:
        cfg.MODEL.WEIGHTS = get_checkpoint(name, manifest=manifest)
    return cfg


# ------------------------------------------------------------------------------------------ manifest
def manifest_path(manifest: Optional[str] = None) -> str:
    """The manifest file in use: ``manifest``, else ``$AUTOFOCUS_MODEL_ZOO_MANIFEST``, else the
    checked-in one."""
    if manifest is not None:
        return os.path.abspath(os.fspath(manifest))
    env = os.environ.get(MANIFEST_ENV)
    if env:
        return os.path.abspath(env)
    return DEFAULT_MANIFEST


def read_manifest_file(path: str) -> Dict[str, Dict]:
    """The JSON object in manifest file ``path``; ModelZooError if it is not valid JSON or not an
    object."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ModelZooError(f"Model zoo manifest {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelZooError(f"Model zoo manifest {path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_manifest(manifest: Optional[str] = None) -> Dict[str, Dict]:
    """The manifest's entries (name -> entry), each checked to have a ``url`` and a ``sha256``."""
    path = manifest_path(manifest)
    if not os.path.isfile(path):
        raise ModelZooError(
            f"Model zoo manifest {path} does not exist. Fix: point ${MANIFEST_ENV} (or the "
            "manifest argument) at the manifest.json that tools/release_checkpoint.py wrote."
        )
    data = read_manifest_file(path)
    for name, entry in data.items():
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not _is_sha256(sha):
            raise ModelZooError(
                f"Model zoo manifest {path}: the entry {name!r} needs a 'url' string and a 'sha256' "
                "of 64 hex digits. Fix: rewrite it with tools/release_checkpoint.py."
            )
    return data


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _manifest_entry(name: str, manifest: Optional[str]) -> Tuple[Dict, str]:
    canon = canonical_name(name)
    path = manifest_path(manifest)
    entries = load_manifest(path)
    if canon not in entries:
        released = ", ".join(sorted(entries)) or "none"
        raise UnknownModelError(
            f"No released checkpoint for {name!r} in the model zoo manifest {path} (released: "
            f"{released}). Fix: train it (train_net.py --config-file configs/{canon}) and release "
            f"it with tools/release_checkpoint.py, or point ${MANIFEST_ENV} at the manifest that "
            "lists it."
        )
    return entries[canon], path


def _resolve_url(url: str, manifest_file: str) -> str:
    scheme = urllib.parse.urlparse(url).scheme
    if scheme in _REMOTE_SCHEMES or scheme == "file" or "://" in url:
        return url
    path = os.path.expanduser(url)
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(manifest_file), path)
    return os.path.normpath(path)


def get_checkpoint_url(name: str, *, manifest: Optional[str] = None) -> str:
    """URL (or absolute local path) of the released checkpoint of ``name``."""
    entry, path = _manifest_entry(name, manifest)
    return _resolve_url(entry["url"], path)


# ------------------------------------------------------------------------------------------ fetching
def sha256_of_file(path: str, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _marker_file(local_path: str) -> str:
    key = hashlib.sha256(os.path.abspath(local_path).encode()).hexdigest()[:32]
    return os.path.join(get_cache_dir(), "autofocus_d2", "verified", key + ".json")


def _stamp(local_path: str, sha256: str) -> Dict:
    st = os.stat(local_path)
    return {"path": os.path.abspath(local_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha256}


def _verify(local_path: str, sha256: str, url: str, downloaded: bool) -> None:
    """Check ``local_path`` against ``sha256`` unless a marker shows it was checked unchanged."""
    marker = _marker_file(local_path)
    stamp = _stamp(local_path, sha256)
    try:
        with open(marker) as f:
            if json.load(f) == stamp:
                return
    except (OSError, ValueError):
        pass
    actual = sha256_of_file(local_path)
    if actual != sha256:
        fix = (
            f"delete {local_path} so that it is downloaded again (an interrupted or altered "
            "download)" if downloaded else
            "release the checkpoint again with tools/release_checkpoint.py, or correct the "
            "manifest's url / sha256"
        )
        raise ChecksumMismatchError(
            f"Checksum mismatch for checkpoint {local_path} (from {url}): sha256 is {actual}, the "
            f"manifest expects {sha256}. Fix: {fix}."
        )
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(stamp, f)
    os.replace(tmp, marker)


def fetch_checkpoint(url: str, sha256: str, *, name: Optional[str] = None,
                     manifest_file: Optional[str] = None) -> str:
    """
    Local path of the checkpoint at ``url`` (remote URL, ``file://`` URL or local path), with its
    sha256 verified (once; see the module docstring). Remote files are downloaded into iopath's
    cache by Detectron2's ``PathManager``. ``name`` and ``manifest_file`` only serve the messages.
    """
    what = f"the checkpoint of {name!r}" if name else "the checkpoint"
    parsed = urllib.parse.urlparse(url)
    remote = parsed.scheme in _REMOTE_SCHEMES
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise CheckpointFetchError(f"Cannot read {what} from {url}: a file:// URL must name a "
                                       "local file (file:///abs/path)")
        source = urllib.request.url2pathname(parsed.path)
    else:
        source = url
    try:
        local = PathManager.get_local_path(source)
    except OSError as e:
        raise CheckpointFetchError(
            f"Could not download {what} from {url}: {e}. Fix: check the network connection (and "
            f"proxy settings); without network, download the file elsewhere and point the manifest "
            f"entry's url (or MODEL.WEIGHTS) at the local copy. Downloads are cached in "
            f"{get_cache_dir()}."
        ) from e
    if not os.path.isfile(local):
        where = f"the manifest {manifest_file}" if manifest_file else "the manifest"
        raise CheckpointFetchError(
            f"Checkpoint file {local} ({what}, {url}) does not exist. Fix: release it with "
            f"tools/release_checkpoint.py, or correct its url in {where}."
        )
    _verify(local, sha256, url, downloaded=remote)
    return local


def get_checkpoint(name: str, *, manifest: Optional[str] = None) -> str:
    """Local, verified path of the released checkpoint of ``name``."""
    entry, path = _manifest_entry(name, manifest)
    return fetch_checkpoint(_resolve_url(entry["url"], path), entry["sha256"], name=name,
                            manifest_file=path)


# ------------------------------------------------------------------------------------------ models
def check_weights_fit(model_state: Mapping[str, torch.Tensor], weights: Mapping, what: str) -> None:
    """Raise ModelZooError unless ``weights`` (name -> array or tensor) have exactly the names and
    shapes of ``model_state`` (a model's ``state_dict()``); ``what`` names both in the message."""
    missing = sorted(set(model_state) - set(weights))
    unexpected = sorted(set(weights) - set(model_state))
    shapes = sorted(
        f"{k}: {tuple(weights[k].shape)} vs {tuple(model_state[k].shape)}"
        for k in set(model_state) & set(weights)
        if tuple(weights[k].shape) != tuple(model_state[k].shape)
    )
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [f"{label} {head(items)}" for label, items in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                    if items]
        raise ModelZooError(f"{what} do not fit: " + "; ".join(problems))


def get(name: str, trained: bool = False, device: Optional[str] = None, *,
        manifest: Optional[str] = None) -> torch.nn.Module:
    """
    Build the model of config ``name`` (``AutoFocusRCNN`` for every config here), as
    ``detectron2.model_zoo.get`` does: in training mode (call ``.eval()`` to run the AutoFocus
    pipeline).

    Args:
        trained: load the released checkpoint (fetched and verified, see :func:`get_config`), and
            check that it holds exactly the model's parameters. False loads the config's own
            ``MODEL.WEIGHTS``, if any.
        device: ``MODEL.DEVICE``; default ``"cuda"`` when available, else ``"cpu"``.
        manifest: manifest file (see the module docstring for the default).
    """
    cfg = get_config(name, trained, manifest=manifest)
    cfg.MODEL.DEVICE = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg)
    if trained:
        with open(cfg.MODEL.WEIGHTS, "rb") as f:
            released = pickle.load(f, encoding="latin1")
        if not isinstance(released, dict) or "model" not in released:
            raise ModelZooError(
                f"Checkpoint {cfg.MODEL.WEIGHTS} of {name!r} is not a released checkpoint (a dict "
                "with 'model'). Fix: release it with tools/release_checkpoint.py."
            )
        check_weights_fit(
            model.state_dict(), released["model"],
            f"The released checkpoint {cfg.MODEL.WEIGHTS} and the model of config {name!r} "
            "(fix: release the checkpoint under the config it was trained with)",
        )
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model
