"""Targets for the root-cause tests (stdlib and launch's child API only)."""

from __future__ import annotations

import atexit
import time

import launch


def crash_slow_exit(delay: float = 0.2, exit_s: float = 2.0) -> None:
    """Raise after ``delay``, then take ``exit_s`` over the interpreter's exit (as torch
    or vLLM do), so that the parent hears of the crash long before the exit."""
    atexit.register(time.sleep, exit_s)
    launch.phase("load_model")
    time.sleep(delay)
    raise RuntimeError("the first failure")


def crash_at(delay: float) -> None:
    launch.phase("load_model")
    time.sleep(delay)
    raise RuntimeError("a later failure")
