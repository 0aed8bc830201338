"""Targets of the misbehaving children (``launch.testing.misbehaving``). Standard library
and launch's child API only: they run inside launched children."""

from __future__ import annotations

import os
import signal
import time

from _launch_child._api import phase, ready, wait_for_stop


def serve(init: float = 0.0) -> None:
    phase("init")
    time.sleep(init)
    ready({"pid": os.getpid()})
    wait_for_stop()


def crash(delay: float = 0.0, message: str = "weights file is corrupt") -> None:
    phase("load_model")
    time.sleep(delay)
    raise RuntimeError(message)


def hang(phase_name: str = "nccl_init") -> None:
    phase(phase_name)
    while True:
        time.sleep(3600)


def slow_start(seconds: float = 2.0) -> None:
    phase("slow_init")
    time.sleep(seconds)
    ready({"pid": os.getpid()})
    wait_for_stop()


def die_after_ready(after: float = 0.2, code: int = 3) -> None:
    ready({"pid": os.getpid()})
    time.sleep(after)
    os._exit(code)


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready({"pid": os.getpid()})
    while True:
        time.sleep(1)
