"""Checkpoints that a kill cannot destroy, a resume that skips an unreadable newest checkpoint, and
weights that must fit the model they are loaded into.

:class:`AtomicCheckpointer` is Detectron2's ``DetectionCheckpointer`` (subclassed, not forked) with
three changes, used by ``train_net.py`` and ``lazyconfig_train_net.py`` for every checkpoint they
write (periodic, final, retrofit, LazyConfig) and every weight file they read:

1. **Atomic saves.** A checkpoint is written to a temporary file in the same folder
   (``.<name>.pth.<random>.tmp``), flushed and fsynced, and moved over the target with
   ``os.replace``; ``last_checkpoint`` is written the same way, after the file it names. A process
   killed mid-save leaves the previous checkpoint and ``last_checkpoint`` as they were (and at worst
   a stray ``*.tmp`` file, removed by the next ``--resume``).
2. **Resume fallback.** ``resume_or_load(..., resume=True)`` whose newest checkpoint (the one
   ``last_checkpoint`` names) cannot be read logs a warning naming it and resumes from the newest
   readable ``*.pth`` of the folder (by modification time); none readable raises
   :class:`CheckpointError` listing the files tried.
3. **Weights must fit.** Loading weights with tensors whose shapes differ from the built model's, or
   none of whose tensors belong to the model, raises :class:`WeightsMismatchError` naming the tensors
   and the likely cause (e.g. the class count). ``allow_mismatch=True`` (the ``--finetune`` flag of
   the trainers) keeps Detectron2's behaviour: such tensors are skipped with a warning and keep their
   initialisation, as when fine-tuning a COCO detector on a dataset with other classes.

With ``metadata`` (``train_net.py``: :func:`~autofocus_d2.model_metadata.model_metadata` of its
config) every checkpoint it saves also holds that record (config, class names, class count,
meta-architecture) under ``autofocus_d2_metadata``, so the weights alone describe the model
(:func:`~autofocus_d2.model_metadata.read_model_metadata`).

A file that cannot be deserialised at all (empty, truncated, not a checkpoint) raises
:class:`CheckpointError` naming the file, its size and what it looks like.
"""
import argparse
import glob
import logging
import os
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import detectron2.utils.comm as comm
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .model_metadata import METADATA_KEY
from .utils.atomic_files import TMP_SUFFIX, atomic_write

__all__ = [
    "AtomicCheckpointer",
    "CheckpointError",
    "WeightsMismatchError",
    "add_finetune_argument",
    "atomic_write",
    "load_weights",
]

logger = logging.getLogger(__name__)

_LAST = "last_checkpoint"
# Modules whose output size grows with the class count (Detectron2's box predictor, RetinaNet head
# classifier, mask predictor), as the end of their parameter names' module path.
_CLASS_MODULES = ("box_predictor.cls_score", "box_predictor.bbox_pred", "head.cls_score",
                  "mask_head.predictor")
_FINETUNE_FLAG = "--finetune"


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (missing, empty, truncated or not a checkpoint)."""


class WeightsMismatchError(ValueError):
    """Weights whose tensors do not fit the model they are loaded into."""


def add_finetune_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--finetune`` to a trainer's argument parser (see :class:`AtomicCheckpointer`)."""
    parser.add_argument(
        _FINETUNE_FLAG,
        action="store_true",
        help="load MODEL.WEIGHTS (train.init_checkpoint) even when some of its tensors do not fit "
        "the model (e.g. another class count): those tensors are skipped with a warning and keep "
        "their initialisation. Without it such weights are an error.",
    )
    return parser


def describe_unreadable(path: str, error: Optional[BaseException] = None) -> str:
    """What an unreadable checkpoint file looks like, from its size and first bytes; ``error`` (the
    loader's exception) is quoted only for a file that looks complete, where it says more."""
    if not os.path.isfile(path):
        return "the file does not exist"
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes; a save killed before writing anything?)"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return (f"a PyTorch zip checkpoint cut short or damaged ({size} bytes; a save killed "
                "half-way, or an incomplete copy/download?)")
    if head == b"PK\x03\x04" or head[:1] == b"\x80":
        first_line = (str(error).strip().splitlines() or [""])[0][:200] if error else ""
        kind = "a PyTorch zip checkpoint" if head[:1] == b"P" else "a pickle"
        return f"{kind} of {size} bytes that failed to load ({type(error).__name__}: {first_line})"
    return f"not a PyTorch or Detectron2 checkpoint ({size} bytes starting with {head!r})"


class AtomicCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` with atomic saves, a resume that falls back to the newest readable
    checkpoint, and an error for weights that do not fit (see the module docstring).

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        allow_mismatch: load weights whose tensors do not fit the model as Detectron2 does
            (skipping those tensors with a warning) instead of raising
            :class:`WeightsMismatchError`; for fine-tuning on other classes.
        metadata: the model's record, written into every checkpoint saved (see the module
            docstring); None writes none.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None,
                 allow_mismatch: bool = False, metadata: Optional[Dict[str, Any]] = None,
                 **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_mismatch = allow_mismatch
        self.metadata = metadata
        self._loading: Optional[str] = None

    @classmethod
    def like(cls, checkpointer: DetectionCheckpointer, *, allow_mismatch: bool = False,
             metadata: Optional[Dict[str, Any]] = None) -> "AtomicCheckpointer":
        """An AtomicCheckpointer of the same model, folder and checkpointables as ``checkpointer``
        (e.g. the one ``DefaultTrainer.__init__`` builds); ``metadata`` default: its own, if any."""
        if metadata is None:
            metadata = getattr(checkpointer, "metadata", None)
        return cls(checkpointer.model, checkpointer.save_dir, save_to_disk=checkpointer.save_to_disk,
                   allow_mismatch=allow_mismatch, metadata=metadata, **checkpointer.checkpointables)

    # ---- saving -------------------------------------------------------------------------------
    def save(self, name: str, **kwargs: Any) -> None:
        """``Checkpointer.save`` (model, checkpointables and ``kwargs`` into ``<name>.pth``), written
        with :func:`atomic_write`, then ``last_checkpoint`` (also atomically)."""
        if not self.save_dir or not self.save_to_disk:
            return
        if self.metadata is not None:
            kwargs.setdefault(METADATA_KEY, self.metadata)
        if "://" in self.save_dir:  # a remote PathManager folder: no rename there
            logger.warning("Saving %s non-atomically: %s is not a local folder", name, self.save_dir)
            super().save(name, **kwargs)
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically."""
        if "://" in self.save_dir:
            super().tag_last_checkpoint(last_filename_basename)
            return
        atomic_write(os.path.join(self.save_dir, _LAST),
                     lambda f: f.write(last_filename_basename.encode()))

    # ---- resuming -----------------------------------------------------------------------------
    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """``Checkpointer.resume_or_load``; on resume, a newest checkpoint that cannot be read is
        skipped with a warning for the newest readable one (:class:`CheckpointError` if none)."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        self._remove_stray_temporaries()
        tried: List[Tuple[str, str]] = []
        for candidate in self._resume_candidates():
            try:
                # A fresh checkpointer per attempt (same model and checkpointables): Detectron2 main's
                # DetectionCheckpointer refuses a second load after one that raised.
                result = type(self).like(self, allow_mismatch=self.allow_mismatch).load(candidate)
            except CheckpointError as e:
                logger.warning("Cannot resume from %s: %s", candidate, e)
                tried.append((candidate, str(e)))
                continue
            if tried:
                logger.warning("Resumed from %s instead of the unreadable %s", candidate,
                               ", ".join(os.path.basename(t) for t, _ in tried))
            return result
        listing = "; ".join(f"{t}: {why}" for t, why in tried) or "no *.pth file"
        raise CheckpointError(
            f"--resume: no readable checkpoint in {self.save_dir} ({listing}). Remove "
            f"{os.path.join(self.save_dir, _LAST)} to start from MODEL.WEIGHTS instead."
        )

    def _resume_candidates(self) -> List[str]:
        """The file ``last_checkpoint`` names, then every other ``*.pth`` of the folder, newest
        (modification time, then name) first."""
        named = self.get_checkpoint_file()
        others = [p for p in self.get_all_checkpoint_files() if os.path.abspath(p) != os.path.abspath(named)]
        others.sort(key=lambda p: (os.path.getmtime(p), os.path.basename(p)), reverse=True)
        return ([named] if named else []) + others

    def _remove_stray_temporaries(self) -> None:
        if "://" in self.save_dir or not comm.is_main_process():
            return
        for tmp in glob.glob(os.path.join(glob.escape(self.save_dir), f".*.pth.*{TMP_SUFFIX}")):
            logger.warning("Removing %s, left by a save that was interrupted", tmp)
            os.remove(tmp)

    # ---- loading ------------------------------------------------------------------------------
    def load(self, path: str, checkpointables: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """``DetectionCheckpointer.load``; raises :class:`CheckpointError` for a local file that
        does not exist or cannot be read, :class:`WeightsMismatchError` for weights that do not fit."""
        local = bool(path) and "://" not in path
        # Other processes of a multi-machine run may lack the file: DetectionCheckpointer handles it.
        if local and comm.is_main_process() and not os.path.isfile(path.split("?")[0]):
            raise CheckpointError(f"Checkpoint {path} does not exist")
        self._loading = path
        try:
            return super().load(path, checkpointables)
        finally:
            self._loading = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            loaded = super()._load_file(filename)
        except Exception as e:  # any failure to deserialise means the file cannot be read
            why = describe_unreadable(filename, e)
            raise CheckpointError(f"Cannot read checkpoint {filename}: {why}") from e
        weights = loaded.get("model") if isinstance(loaded, dict) else loaded
        if not isinstance(weights, dict):  # DetectionCheckpointer puts anything but {"model": ..} there
            raise CheckpointError(f"{filename} is not a checkpoint: it holds a {type(weights).__name__}, "
                                  "not a dict of tensors or a dict with 'model'")
        return loaded

    def _load_model(self, checkpoint: Any):
        incompatible = super()._load_model(checkpoint)
        model_keys = set(self.model.state_dict())
        shapes = list(incompatible.incorrect_shapes)
        loaded = model_keys - set(incompatible.missing_keys) - {k for k, _, _ in shapes}
        loaded -= {"pixel_mean", "pixel_std"}  # not learnt; missing from old checkpoints
        nothing = not loaded and bool(model_keys)
        if (shapes or nothing) and not self.allow_mismatch:
            raise WeightsMismatchError(self._mismatch_message(shapes, nothing))
        return incompatible

    def _mismatch_message(self, shapes: List[Tuple[str, tuple, tuple]], nothing: bool) -> str:
        what = f"The weights of {self._loading}"
        if nothing and not shapes:
            msg = (f"{what} hold no tensor of this model (names all differ): another architecture "
                   "(META_ARCHITECTURE, heads) than the one built?")
        else:
            listed = "; ".join(f"{k}: {tuple(c)} in the file vs {tuple(m)} in the model"
                               for k, c, m in shapes[:6])
            more = f" (+{len(shapes) - 6} more)" if len(shapes) > 6 else ""
            msg = f"{what} do not fit the model: {len(shapes)} tensors differ in shape: {listed}{more}. "
            msg += _likely_cause(shapes)
        return msg + (f" To fine-tune from them anyway (the misfitting tensors keep their "
                      f"initialisation), pass {_FINETUNE_FLAG}.")


def _likely_cause(shapes: List[Tuple[str, tuple, tuple]]) -> str:
    """A guess from the names of the misfitting tensors: only classifier outputs -> class count."""
    if all(k.rsplit(".", 1)[0].endswith(_CLASS_MODULES) for k, _, _ in shapes):
        counts = ""
        for k, c, m in shapes:
            if k.endswith("box_predictor.cls_score.weight"):  # FastRCNNOutputLayers: K + background
                counts = f" ({c[0] - 1} classes in the file, {m[0] - 1} in the model)"
        return ("Likely cause: the class count differs" + counts + " (MODEL.ROI_HEADS.NUM_CLASSES / "
                "MODEL.RETINANET.NUM_CLASSES, or model.*.num_classes in a LazyConfig).")
    return ("Likely cause: another architecture or width (backbone depth, FPN channels, head "
            "convolutions) than the config the weights were trained with.")


def load_weights(model: torch.nn.Module, path: str, *, allow_mismatch: bool = False) -> Dict[str, Any]:
    """Load the weights file ``path`` (``.pth``, Detectron2 ``.pkl``, ``detectron2://`` URL) into
    ``model`` with :class:`AtomicCheckpointer`'s checks; return the file's remaining (non-model)
    entries. For the tools that run a trained model (demo, benchmark, mining)."""
    return AtomicCheckpointer(model, allow_mismatch=allow_mismatch).load(path)
