"""Ctrl-C held back while a teardown runs, then delivered as it would have been.

A teardown is bounded by its :class:`ShutdownPolicy`, but a SIGINT arriving during it (the
operator's second Ctrl-C) would cut it off halfway: trio delivers ``KeyboardInterrupt``
to the main task whatever cancel scopes shield it, and asyncio's runner raises it out of
the event loop on the second Ctrl-C. Children that ignore SIGTERM would then never get
their SIGKILL, and nobody would reap them.

So while any teardown runs in the main thread, SIGINT is only recorded. When the last
teardown ends, the host's own handler (trio's, asyncio's, Python's default, or the
application's) is put back and a recorded SIGINT is raised again, so the host sees it
exactly as it would have, only after every child is gone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_depth = 0
_saved: Any = None
_pending = False


def _record(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold SIGINT back for the duration of the block (main thread only; nests)."""
    global _depth, _saved, _pending
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only: nothing to hold
        return
    if _depth == 0:
        current = signal.getsignal(signal.SIGINT)
        if current is None:  # installed from C, not from Python: leave it alone
            yield
            return
        _saved = current
        signal.signal(signal.SIGINT, _record)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            signal.signal(signal.SIGINT, _saved)
            _saved = None
            if _pending:
                _pending = False
                signal.raise_signal(signal.SIGINT)
