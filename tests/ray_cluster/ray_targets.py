"""Child targets for the Ray placement tests (stdlib + launch only, run on the nodes)."""

from __future__ import annotations

import os
import subprocess
import time

import launch


def where(delay: float = 0.0) -> None:
    """READY with its pid and the Ray resources its actor was given (from the env)."""
    launch.phase("init")
    time.sleep(delay)
    launch.ready({"pid": os.getpid(), "ppid": os.getppid(), "clock": time.monotonic()})
    launch.wait_for_stop()


def with_grandchild() -> None:
    """Starts a grandchild that leaves the child's process group (its own session),
    then READY with both pids."""
    grandchild = subprocess.Popen(["sleep", "300"], start_new_session=True)
    launch.ready({"pid": os.getpid(), "grandchild": grandchild.pid})
    launch.wait_for_stop()
