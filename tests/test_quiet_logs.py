"""Quiet logs: the tools filter the known third-party warnings at their entry (and only those),
SAHI's repeated warning is shown once, and progress in a log file is plain lines."""
import io
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

from autofocus_d2.utils.quiet_logs import SAHI_ONCE, OnceFilter, progress, quiet_logs



@pytest.mark.slow
def test_a_tool_starts_without_the_torch_jit_script_warning(repo_root):
    proc = subprocess.run([sys.executable, "-W", "default", os.path.join(repo_root, "demo.py"), "--help"],
                          capture_output=True, text=True, cwd=repo_root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: demo.py" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]


def test_quiet_logs_filters_the_known_warnings_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_logs()
        quiet_logs()  # twice: nothing more
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                      FutureWarning)
        torch.meshgrid(torch.arange(2), torch.arange(3))  # torch's own warning (no indexing=)
        warnings.warn("something else is deprecated", FutureWarning)
        warnings.warn("`torch.jit.script` is deprecated", UserWarning)  # another category: kept
    assert [(w.category, str(w.message)) for w in caught] == [
        (FutureWarning, "something else is deprecated"), (UserWarning, "`torch.jit.script` is deprecated")]


def test_sahis_switching_warning_is_shown_once():
    sahi = logging.getLogger("sahi")
    # A filter installed by an earlier quiet_logs() of this process may have shown it already.
    for f in [f for f in sahi.filters if isinstance(f, OnceFilter) and f.text == SAHI_ONCE]:
        sahi.removeFilter(f)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    sahi.addHandler(handler)
    try:
        quiet_logs()
        for _ in range(8):
            sahi.warning("Switching postprocess type/metric to NMS/IOU since model confidence threshold is low (0.05).")
        sahi.warning("another message")
        sahi.warning("another message")
    finally:
        sahi.removeHandler(handler)
        for f in [f for f in sahi.filters if isinstance(f, OnceFilter) and f.text == SAHI_ONCE]:
            sahi.removeFilter(f)
    assert [r.getMessage()[:26] for r in records] == ["Switching postprocess type", "another message",
                                                      "another message"]


def test_progress_in_a_log_file_is_plain_lines():
    stream = io.StringIO()  # not a terminal
    assert list(progress(range(4), "benchmark", period=0.0, stream=stream)) == [0, 1, 2, 3]
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(" ")[:3] for line in lines] == [
        ["benchmark:", "1/4", "(25%)"], ["benchmark:", "2/4", "(50%)"], ["benchmark:", "3/4", "(75%)"],
        ["benchmark:", "4/4", "(100%)"]]
    # A long period: only the last line; disabled: nothing.
    stream = io.StringIO()
    list(progress(range(4), "oracle chips", period=3600.0, stream=stream))
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("oracle chips: 4/4 (100%)")
    stream = io.StringIO()
    list(progress(range(4), "x", enabled=False, stream=stream))
    assert stream.getvalue() == ""
