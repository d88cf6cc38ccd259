"""Quiet logs: the known third-party warnings the tools filter at their entry, and progress that
stays readable in log files.

:func:`quiet_logs`, called first by each tool's ``main`` (not at library import), hides
torch's ``torch.jit.script`` deprecation FutureWarning (Detectron2 scripts two box functions),
torch's ``meshgrid`` indexing UserWarning (Detectron2's anchor generator), and shows SAHI's
"Switching postprocess type/metric to NMS/IOU" warning once per run instead of once per image.
The one filter at library import is narrower: around ``import autofocus_d2``'s own imports of
Detectron2, which script those functions at import time (so even ``--help`` printed
the FutureWarning twice), in ``autofocus_d2/__init__.py``.

:func:`progress` is tqdm on a terminal and, elsewhere (a log file, a pipe), a plain line every
``period`` seconds and at the end: no carriage-return bars in files.
"""
import logging
import sys
import time
import warnings
from typing import Iterable, Iterator, Optional, TypeVar

__all__ = ["KNOWN_WARNINGS", "OnceFilter", "progress", "quiet_logs"]

T = TypeVar("T")

# (category, message regex) of the third-party warnings the tools hide.
KNOWN_WARNINGS = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing"),
)
# SAHI logs this for every image sliced with a low confidence threshold: shown once.
SAHI_ONCE = "Switching postprocess type"
logger = logging.getLogger(__name__)


class OnceFilter(logging.Filter):
    """A logging filter that lets through the first record whose message contains ``text`` and
    drops the later ones (other records pass)."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        return True


def quiet_logs() -> None:
    """Filter the known third-party warnings (see the module docstring) for this process; calling
    it again adds nothing."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    sahi = logging.getLogger("sahi")
    if not any(isinstance(f, OnceFilter) and f.text == SAHI_ONCE for f in sahi.filters):
        sahi.addFilter(OnceFilter(SAHI_ONCE))


def progress(iterable: Iterable[T], desc: str, *, total: Optional[int] = None, enabled: bool = True,
             period: float = 10.0, stream=None) -> Iterator[T]:
    """Iterate ``iterable`` showing progress: a tqdm bar when ``stream`` (default stderr) is a
    terminal, else the line ``<desc>: <done>/<total> (<percent>%) <elapsed> s`` at most every
    ``period`` seconds and once at the end. ``enabled`` False: no output."""
    stream = stream or sys.stderr
    if not enabled:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=False, file=stream)
        return
    start = last = time.perf_counter()
    done = 0
    of = f"/{total}" if total else ""
    for item in iterable:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= period or done == total:
            last = now
            share = f" ({100 * done // total}%)" if total else ""
            print(f"{desc}: {done}{of}{share} {now - start:.1f} s", file=stream, flush=True)
