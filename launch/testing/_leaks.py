"""The no-leaked-process check: processes a test started that are still alive after it."""

from __future__ import annotations

import os
import time
from typing import Any


class LeakedProcesses(AssertionError):
    """Processes started during a test were still running after it (they are killed)."""


def _psutil() -> Any:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError(
            "launch's leak check needs psutil: pip install 'launch[testing]'"
        ) from None
    return psutil


class ProcessWatch:
    """Snapshot this process's descendants now; :meth:`leftovers` later lists the ones
    that appeared since and are still alive, plus orphans of this user named python
    created since (a child whose parent died is re-parented away from us).

    Long-lived singletons are not leaks: launch's forkserver and multiprocessing's
    resource tracker.
    """

    def __init__(self) -> None:
        self._psutil = _psutil()
        me = self._psutil.Process()
        self.before = {p.pid for p in me.children(recursive=True)}
        self.started = time.time()

    def _alive(self, proc: Any) -> bool:
        try:
            return bool(proc.status() != self._psutil.STATUS_ZOMBIE)
        except self._psutil.NoSuchProcess:
            return False

    def _allowed(self) -> set[int]:
        from multiprocessing import resource_tracker

        from .._forkserver import FORKSERVER

        tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
        return self.before | {FORKSERVER.pid or -1, tracker or -1}

    def leftovers(self) -> list[Any]:
        """The processes that leaked (``psutil.Process`` objects)."""
        psutil = self._psutil
        allowed = self._allowed()
        me = psutil.Process()
        found = {
            p.pid: p for p in me.children(recursive=True) if p.pid not in allowed and self._alive(p)
        }
        uid = os.getuid()
        for proc in psutil.process_iter(["ppid", "create_time", "uids", "name"]):
            info = proc.info
            if (
                info["ppid"] == 1
                and info["create_time"] is not None
                and info["create_time"] >= self.started - 1
                and info["uids"] is not None
                and info["uids"].real == uid
                and "python" in (info["name"] or "")
                and self._alive(proc)
            ):
                found.setdefault(proc.pid, proc)
        return list(found.values())

    def check(self) -> None:
        """Kill whatever leaked and raise :class:`LeakedProcesses` naming it."""
        leaked = self.leftovers()
        described = []
        for proc in leaked:
            try:
                described.append(f"{proc.pid} {' '.join(proc.cmdline()[:3])}")
                proc.kill()
            except self._psutil.NoSuchProcess:
                pass
        if described:
            raise LeakedProcesses(f"processes left running (now killed): {described}")
