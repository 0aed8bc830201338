"""launch's own forkserver, parent side: start it, preload modules into it, fork from it.

Never the host's multiprocessing forkserver and never ``set_start_method``: the server is
a plain subprocess running ``_launch_child._forkserver.serve``. One per parent process,
started by :func:`prewarm` or by the first ``forkserver`` child, stopped at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from _launch_child._forkserver import CUDA_REFUSED

from .._fds import own_fd, own_socket
from .interpreter import child_interpreter_argv
from .lock import LAUNCH_LOCK

logger = logging.getLogger("launch")

_STOP_TIMEOUT_S = 2.0
_DEATHS_KEPT = 16


class ForkserverError(RuntimeError):
    """The forkserver could not be started, a preloaded module failed to import, or a
    preload initialised CUDA in the server (which then forks no child).

    A ``RuntimeError`` whose message says what happened (an import failure carries the
    server's traceback). :func:`prewarm` raises it when the server dies as soon as it
    is started; a forkserver child meeting it fails with a :class:`SpawnFailed` that
    has its text in ``detail``. It carries no other attributes.
    """


class ForkServer:
    """A forkserver process and the socket to it. Thread-safe; blocking calls.

    A server that died (the OOM killer, a stray signal) is noticed at the next request
    (its exit, or its socket breaking) and replaced by a fresh one, which imports every
    module requested since the last :meth:`stop` again.
    """

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        """No server: the initial state, and a forked child's (it starts its own)."""
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._requested: list[str] = []  # every preload asked for since the last stop()
        self._asked: list[str] = []  # the preloads the running server was asked for
        self._greeted = False  # the running server was sent its first request
        self._unanswered = 0
        self._error: str | None = None
        self._atexit = False
        self._deaths: dict[int, str] = {}  # pid of a server gone → how, in words
        self._last_death: int | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._popen.pid if self._popen is not None else None

    def death_of(self, pid: int) -> str | None:
        """How the server that had ``pid`` ended, in words ("was killed by SIGKILL");
        None while that is not known (it runs, or its exit is not visible yet)."""
        how = self._deaths.get(pid)
        popen = self._popen
        if how is None and popen is not None and popen.pid == pid:
            code = popen.poll()
            if code is not None:
                how = _describe_exit(code)
        return how

    def start(self, preload: Iterable[str] = ()) -> None:
        """Start the server if needed and ask it to import ``preload``; returns at once."""
        modules = [m for m in dict.fromkeys(preload)]
        for name in modules:
            if not isinstance(name, str) or not name:
                raise ValueError(f"prewarm: preload entries must be module names, got {name!r}")
        self._ensure(modules)

    def _ensure(self, modules: list[str]) -> None:
        """Have a live server that was asked to import ``modules`` and every earlier one."""
        with self._lock:  # not LAUNCH_LOCK: other children spawn while this waits
            if self._alive() and self._ask(modules):
                return
        with LAUNCH_LOCK, self._lock:  # starting it is a spawn like any other
            if self._alive() and self._ask(modules):
                return
            self._launch()
            if not self._ask(modules):
                raise ForkserverError(
                    f"launch's forkserver {self._death_text()} as soon as it was started"
                )

    def _ensure_running(self) -> None:
        self._ensure([])

    def _alive(self) -> bool:
        """True if the server runs; a dead one is forgotten (under ``_lock``)."""
        if self._sock is None or self._popen is None:
            return False
        if self._popen.poll() is None:
            return True
        self._discard()
        return False

    def _discard(self) -> None:
        """Forget a server that died or stopped answering, and reap it (under ``_lock``)."""
        popen, sock = self._popen, self._sock
        self._popen = self._sock = None
        self._unanswered = 0
        if sock is not None:
            sock.close()
        if popen is None:
            return
        code = popen.poll()
        if code is None:  # its socket broke and it has not exited yet: it serves no one now
            try:
                code = popen.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                try:
                    code = popen.wait(_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    logger.error("launch's forkserver (pid %d) survived SIGKILL", popen.pid)
        how = "is gone" if code is None else _describe_exit(code)
        if len(self._deaths) >= _DEATHS_KEPT:
            del self._deaths[next(iter(self._deaths))]
        self._deaths[popen.pid] = how
        self._last_death = popen.pid
        logger.warning(
            "launch's forkserver (pid %d) %s; the next forkserver child starts a fresh one",
            popen.pid,
            how,
        )

    def _death_text(self) -> str:
        pid = self._last_death
        if pid is None:
            return "is gone"
        return f"(pid {pid}) {self._deaths.get(pid, 'is gone')}"

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
        self._sock = own_socket(ours)
        self._asked = []
        self._greeted = False
        self._unanswered = 0
        self._error = None
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def _ask(self, modules: list[str]) -> bool:
        """Ask the running server to import what it was not asked for yet (also every
        earlier request, if it is a fresh one); False if it is gone (it is forgotten)."""
        assert self._sock is not None
        wanted = list(dict.fromkeys([*self._requested, *modules]))
        new = [m for m in wanted if m not in self._asked]
        if not new and self._greeted:
            return True
        try:
            self._sock.send(pickle.dumps(("preload", new, list(sys.path), os.getcwd())))
        except OSError:
            self._discard()
            return False
        self._requested = wanted
        self._asked.extend(new)
        self._greeted = True
        self._unanswered += 1
        return True

    def _recv(self, doing: str) -> tuple[Any, ...]:
        assert self._sock is not None
        try:
            data = self._sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._discard()
            raise ForkserverError(
                f"launch's forkserver {self._death_text()} while {doing}; "
                "the next forkserver child starts a fresh one"
            )
        reply: tuple[Any, ...] = pickle.loads(data)
        return reply

    def _drain_warm(self) -> None:
        while self._unanswered:
            kind, error = self._recv(f"importing its preload modules {self._asked}")
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
            if self._sock is None:  # it died since: the fork starts a fresh one
                return
            self._drain_warm()

    def fork(
        self, control_fd: int, parent_pid: int, output_fds: tuple[int, ...] = ()
    ) -> tuple[int, int]:
        """Fork a child that runs the bootstrap on ``control_fd``; returns (pid, status fd).

        ``output_fds`` (two write ends, or none) become the child's stdout and stderr.
        Called under LAUNCH_LOCK. A server found dead is replaced first; one that dies
        before it has read the request is replaced and asked again (its preloads are then
        imported under the launch lock: rare, and better than a failed spawn). One that
        dies after reading it may have forked: that spawn fails (the control socket
        closes, so such a child exits) and the next one starts a fresh server.
        """
        for _ in range(2):
            self._ensure_running()
            with self._lock:
                if self._sock is None:
                    continue
                self._drain_warm()
                status_r, status_w = os.pipe()
                try:
                    try:
                        socket.send_fds(
                            self._sock,
                            [pickle.dumps(("fork", parent_pid))],
                            [control_fd, status_w, *output_fds],
                        )
                    except OSError:  # it never read the request
                        self._discard()
                        os.close(status_r)
                        continue
                    kind, pid = self._recv("forking a child")
                except BaseException:
                    os.close(status_r)
                    raise
                finally:
                    os.close(status_w)
                if kind == "refused":
                    os.close(status_r)
                    raise ForkserverError(str(pid).removeprefix(CUDA_REFUSED))
                assert kind == "forked", kind
                return pid, own_fd(status_r)
        raise ForkserverError(f"launch's forkserver {self._death_text()} twice in a row")

    def stop(self) -> None:
        """Close the server's socket (it exits on EOF) and reap it; forget its preloads."""
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
            self._requested = []
            self._asked = []
            self._unanswered = 0
            self._error = None
        if popen is not None:
            try:
                code = popen.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                popen.kill()
                code = popen.wait()
            self._deaths[popen.pid] = "was stopped" if code == 0 else _describe_exit(code)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


FORKSERVER = ForkServer()


os.register_at_fork(after_in_child=FORKSERVER._forget)


def prewarm(preload: Iterable[str] = ()) -> None:
    """Start launch's forkserver now, importing ``preload`` modules once in it.

    Returns at once: the server imports in the background. Children with
    ``start_method="forkserver"`` are cheap forks of it; one spawned before the server is
    warm waits for it. Calling again with more modules imports those too.

    A module that fails to import does not raise here: the next forkserver child's
    spawn fails with a :class:`SpawnFailed` naming it.

    Args:
        preload: Module names (a list, not a single string) to import in the server;
            each is imported once, however often it is asked for.

    Raises:
        ValueError: ``preload`` is a string, or holds something other than a non-empty
            module name.
        ForkserverError: The server died as soon as it was started.
        OSError: The server could not be started (e.g. out of file descriptors).
    """
    if isinstance(preload, str):
        raise ValueError("prewarm(preload=...) takes a list of module names, not a string")
    FORKSERVER.start(preload)
