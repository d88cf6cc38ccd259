"""Files written whole or not at all: a temporary file in the same folder, flushed and fsynced,
then ``os.replace`` (atomic on POSIX), then the folder fsynced. Checkpoints, ``last_checkpoint``
and prediction outputs all go through :func:`atomic_write`."""
import json
import os
import secrets
from typing import IO, Any, Callable

__all__ = ["TMP_SUFFIX", "atomic_write", "write_json_atomic"]

# Suffix of the temporary files (".<name>.<random>.tmp"); a kill during a write can leave one.
TMP_SUFFIX = ".tmp"


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """
    Write ``path`` so that it holds either its old content or the complete new one, whatever
    happens during the write: ``write(f)`` fills a temporary file of the same folder, which is
    flushed, fsynced and moved over ``path`` with ``os.replace``; the folder is then fsynced so
    that the rename itself survives a crash. On an exception the temporary file is removed and
    ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    # os.open with 0o666 so that the umask applies, as for a file written in place.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: folders cannot be opened
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, obj: Any) -> None:
    """:func:`atomic_write` of ``obj`` as JSON (the folder is created if missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(obj).encode("utf-8")))
