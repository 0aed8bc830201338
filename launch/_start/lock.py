"""The launch lock: serializes parent-side env overlays and every process start.

Every fork/exec launch does (children of each start method, and the forkserver itself)
happens under it: a ``fork``-method child forked while another thread is inside
``subprocess.Popen`` would inherit that Popen's exec-status pipe and stall it. Re-entrant,
because forking from the forkserver may first have to start the server. Lock order:
this lock before the forkserver's own lock, never the other way round.
"""

from __future__ import annotations

import os
import threading

LAUNCH_LOCK = threading.RLock()


def _reinit_in_child() -> None:
    # A child forked while a spawner thread held the lock (launch's own fork start does
    # exactly that) would otherwise inherit it held by a thread it does not have, and
    # the first spawn in the child (a vLLM engine starting its workers) would wait
    # forever.
    LAUNCH_LOCK._at_fork_reinit()  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_reinit_in_child)
