"""Process checks shared by the tests (parent side only: imports psutil)."""

from __future__ import annotations

import psutil


def alive(pid: int | None) -> bool:
    """True if ``pid`` is a live process (a zombie counts as gone)."""
    assert pid is not None
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
