"""launch's own forkserver, parent side: start it, preload modules into it, fork from it.

Never the host's multiprocessing forkserver and never ``set_start_method``: the server is
a plain subprocess running ``_launch_child._forkserver.serve``. One per parent process,
started by :func:`prewarm` or by the first ``forkserver`` child, stopped at exit.
"""

from __future__ import annotations

import atexit
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from _launch_child._forkserver import CUDA_REFUSED

from ._interpreter import child_interpreter_argv
from ._lock import LAUNCH_LOCK

_STOP_TIMEOUT_S = 2.0


class ForkserverError(RuntimeError):
    """The forkserver could not be started, a preloaded module failed to import, or a
    preload initialised CUDA in the server (which then forks no child)."""


class ForkServer:
    """A forkserver process and the socket to it. Thread-safe; blocking calls."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        """No server: the initial state, and a forked child's (it starts its own)."""
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._requested: list[str] = []
        self._unanswered = 0
        self._error: str | None = None
        self._atexit = False

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._popen.pid if self._popen is not None else None

    def start(self, preload: Iterable[str] = ()) -> None:
        """Start the server if needed and ask it to import ``preload``; returns at once."""
        modules = [m for m in dict.fromkeys(preload)]
        for name in modules:
            if not isinstance(name, str) or not name:
                raise ValueError(f"prewarm: preload entries must be module names, got {name!r}")
        if self._sock is None:
            with LAUNCH_LOCK, self._lock:  # starting it is a spawn like any other
                if self._sock is None:
                    self._launch()
                    self._request_preload(modules)
                    return
        with self._lock:  # not LAUNCH_LOCK: other children spawn while this waits
            new = [m for m in modules if m not in self._requested]
            if new:
                self._request_preload(new)

    def _ensure_running(self) -> None:
        """Start the server if needed: a spawn like any other, so under the launch lock."""
        if self._sock is not None:
            return
        with LAUNCH_LOCK, self._lock:
            if self._sock is None:
                self._launch()
                self._request_preload([])

    def _launch(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._popen = subprocess.Popen(
                child_interpreter_argv("_forkserver", f"serve({theirs.fileno()})"),
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self._requested = []
        self._unanswered = 0
        self._error = None
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def _request_preload(self, modules: list[str]) -> None:
        assert self._sock is not None
        self._sock.send(pickle.dumps(("preload", modules, list(sys.path), os.getcwd())))
        self._requested.extend(modules)
        self._unanswered += 1

    def _recv(self) -> tuple[Any, ...]:
        assert self._sock is not None
        data = self._sock.recv(1 << 16)
        if not data:
            raise ForkserverError("launch's forkserver exited unexpectedly")
        reply: tuple[Any, ...] = pickle.loads(data)
        return reply

    def _drain_warm(self) -> None:
        while self._unanswered:
            kind, error = self._recv()
            assert kind == "warm", kind
            self._unanswered -= 1
            if error is not None:
                self._error = error
        if self._error is not None:
            if self._error.startswith(CUDA_REFUSED):
                raise ForkserverError(self._error.removeprefix(CUDA_REFUSED))
            raise ForkserverError(f"forkserver preload failed:\n{self._error}")

    def wait_warm(self) -> None:
        """Block until every requested preload has been imported by the server."""
        self._ensure_running()
        with self._lock:  # held while the server imports; never waits for LAUNCH_LOCK
            self._drain_warm()

    def fork(
        self, control_fd: int, parent_pid: int, output_fds: tuple[int, ...] = ()
    ) -> tuple[int, int]:
        """Fork a child that runs the bootstrap on ``control_fd``; returns (pid, status fd).

        ``output_fds`` (two write ends, or none) become the child's stdout and stderr.
        Called under LAUNCH_LOCK.
        """
        self._ensure_running()
        with self._lock:
            self._drain_warm()
            status_r, status_w = os.pipe()
            try:
                socket.send_fds(
                    self._sock,  # type: ignore[arg-type]
                    [pickle.dumps(("fork", parent_pid))],
                    [control_fd, status_w, *output_fds],
                )
                kind, pid = self._recv()
            except BaseException:
                os.close(status_r)
                raise
            finally:
                os.close(status_w)
            if kind == "refused":
                os.close(status_r)
                raise ForkserverError(str(pid).removeprefix(CUDA_REFUSED))
            assert kind == "forked", kind
            return pid, status_r

    def stop(self) -> None:
        """Close the server's socket (it exits on EOF) and reap it."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in _recv
            except OSError:
                pass
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            popen, self._popen = self._popen, None
        if popen is not None:
            try:
                popen.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


FORKSERVER = ForkServer()


os.register_at_fork(after_in_child=FORKSERVER._forget)


def prewarm(preload: Iterable[str] = ()) -> None:
    """Start launch's forkserver now, importing ``preload`` modules once in it.

    Returns at once: the server imports in the background. Children with
    ``start_method="forkserver"`` are cheap forks of it; one spawned before the server is
    warm waits for it. Calling again with more modules imports those too.
    """
    if isinstance(preload, str):
        raise ValueError("prewarm(preload=...) takes a list of module names, not a string")
    FORKSERVER.start(preload)
