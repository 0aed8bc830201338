"""Targets for the root-cause tests (stdlib and launch's child API only)."""

from __future__ import annotations

import atexit
import time
from pathlib import Path

import launch


def crash_slow_exit(marker: str, delay: float = 0.2, exit_s: float = 2.0) -> None:
    """Raise after ``delay`` (leaving ``marker`` behind), then take ``exit_s`` over the
    interpreter's exit (as torch or vLLM do): the parent hears of the crash long before
    the exit."""
    atexit.register(time.sleep, exit_s)
    launch.phase("load_model")
    time.sleep(delay)
    Path(marker).touch()
    raise RuntimeError("the first failure")


def crash_after(marker: str, delay: float) -> None:
    """Raise ``delay`` seconds after ``marker`` appears: after the first failure by the
    clock, however the two children's starts were scheduled."""
    launch.phase("load_model")
    deadline = time.monotonic() + 60
    while not Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    raise RuntimeError("a later failure")
