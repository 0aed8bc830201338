"""The launch lock: serializes parent-side env overlays and every process start.

Every fork/exec launch does (children of each start method, and the forkserver itself)
happens under it: a ``fork``-method child forked while another thread is inside
``subprocess.Popen`` would inherit that Popen's exec-status pipe and stall it. Re-entrant,
because forking from the forkserver may first have to start the server. Lock order:
this lock before the forkserver's own lock, never the other way round.
"""

from __future__ import annotations

import threading

LAUNCH_LOCK = threading.RLock()
