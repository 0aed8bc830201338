"""Child targets of the orphan and fd fault tests. Imported inside launched children:
standard library and launch only."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import launch

# A descendant that ignores SIGTERM: only SIGKILL takes it.
_STUBBORN_SLEEP = ["sh", "-c", "trap '' TERM; exec sleep 600"]


def _daemon() -> int:
    """Start a process that left this process's group and session (double fork +
    ``setsid``, as a daemon does) and ignores SIGTERM; its pid."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - the middle process
        try:
            os.setsid()
            daemon = subprocess.Popen(_STUBBORN_SLEEP, stdin=subprocess.DEVNULL)
            os.write(w, str(daemon.pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(middle, 0)
    with os.fdopen(r, "rb") as f:
        return int(f.read())


def family(mode: str = "serve", go: str | None = None) -> None:
    """A grandchild in the child's group and a daemon outside it, both ignoring SIGTERM;
    READY with their pids; then (once the file ``go`` exists, if given), by ``mode``:

    - ``serve``: serve until the cooperative stop;
    - ``raise``: raise;
    - ``sigkill``: SIGKILL itself (no cleanup of its own can run);
    - ``gil``: stuck in a C call that holds the GIL with SIGTERM blocked (no Python
      thread of this process runs again; only SIGKILL ends it).
    """
    grandchild = subprocess.Popen(_STUBBORN_SLEEP, stdin=subprocess.DEVNULL)
    daemon = _daemon()
    launch.ready({"grandchild": grandchild.pid, "daemon": daemon})
    deadline = time.monotonic() + 60
    while go is not None and not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    if mode == "serve":
        launch.wait_for_stop()
        return
    if mode == "raise":
        raise RuntimeError("lost connection to peer")
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    import ctypes

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL
    while True:
        libc.sleep(60)
