"""The no-leaked-process check: processes a test started that are still alive after it.

Only processes this session marked as its own are ever looked at (or killed):

- this process's descendants that appeared during the test;
- processes created during the test that carry this process's token in the
  :data:`TOKEN_ENV` variable of their environment. The token is added to ``os.environ``
  once per process (under launch's lock), so everything the test starts inherits it,
  down to a grandchild that left its session and was orphaned (re-parented to init or
  to another subreaper), whatever its name.

A process started with a scrubbed environment that is then orphaned carries no token and
is not seen; neither is one of another user. A process of the same user that the test
did not start never is: it has no token of ours, or it existed before the test began.

The test process is deliberately not made a child subreaper (``PR_SET_CHILD_SUBREAPER``):
that would change the process's semantics for the code under test (orphans of the test
become zombie children of the test runner that nothing reaps, ``pid_exists`` stays true
for dead grandchildren, ``getppid()`` in a grandchild no longer says 1) and could not be
undone for what was already adopted.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from ..hooks import environ_lock, forkserver_pid

TOKEN_ENV = "LAUNCH_TESTING_TOKENS"
"""Environment variable listing (``:``-separated) the tokens of the leak-checking
processes a process descends from: every process a test starts inherits it, so the leak
check recognises an orphan of the test whatever its name."""

_SETTLE_S = 1.0
_KILL_WAIT_S = 2.0

_token: tuple[int, str] | None = None  # (pid that made it, token)


def session_token() -> str:
    """This process's token, added to ``os.environ`` (inherited by what it starts) if it
    is not there yet. A forked child makes its own, appended to the inherited list, so a
    nested session sees only its own processes and its parent session still sees them."""
    global _token
    with environ_lock():
        if _token is None or _token[0] != os.getpid():
            _token = (os.getpid(), f"{os.getpid()}-{secrets.token_hex(8)}")
        token = _token[1]
        inherited = [t for t in os.environ.get(TOKEN_ENV, "").split(":") if t]
        if token not in inherited:
            os.environ[TOKEN_ENV] = ":".join([*inherited, token])
        return token


class LeakedProcesses(AssertionError):
    """Processes started during a test were still running after it (they are killed).

    An ``AssertionError``, raised by :meth:`ProcessWatch.check` (the
    ``no_leaked_processes`` fixture turns it into the test's failure); its message
    lists each leaked process as ``"pid command"``. It carries no other attributes.
    """


def _psutil() -> Any:
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError(
            "launch's leak check needs psutil: pip install 'launch-tree[testing]'"
        ) from None
    return psutil


class ProcessWatch:
    """Snapshot the processes that exist now; :meth:`leftovers` later lists those that
    appeared since, are still alive, and are this process's own: its descendants, or
    processes carrying its token (orphans whose parent died, whatever their name).

    Long-lived singletons are not leaks: launch's forkserver and multiprocessing's
    resource tracker.

    Making one adds this process's token to ``os.environ[TOKEN_ENV]`` (see
    :data:`TOKEN_ENV`), so every process started from here on carries it.

    Attributes:
        token (str): This process's leak-check token.
        before (set[int]): The pids of this process's descendants when the watch was
            made (never counted as leaks).
        started (float): ``time.time()`` when the watch was made.

    Raises:
        RuntimeError: psutil is not installed (``pip install 'launch-tree[testing]'``).
    """

    def __init__(self) -> None:
        self._psutil = _psutil()
        self.token = session_token()
        me = self._psutil.Process()
        self.before = {p.pid for p in me.children(recursive=True)}
        self._existing = set(self._psutil.pids())
        self.started = time.time()

    def _alive(self, proc: Any) -> bool:
        try:
            return bool(proc.status() != self._psutil.STATUS_ZOMBIE)
        except self._psutil.Error:
            return False

    def _allowed(self) -> set[int]:
        from multiprocessing import resource_tracker

        tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
        return self.before | {forkserver_pid() or -1, tracker or -1}

    def _marked(self, pid: int) -> Any | None:
        """The process ``pid`` if it is of this user and carries our token, else None."""
        psutil = self._psutil
        try:
            proc = psutil.Process(pid)
            if proc.uids().real != os.getuid():
                return None
            tokens = proc.environ().get(TOKEN_ENV, "").split(":")
        except psutil.Error:  # gone, a zombie, or not ours to read
            return None
        return proc if self.token in tokens else None

    def leftovers(self) -> list[Any]:
        """The processes that leaked (``psutil.Process`` objects).

        Returns:
            The live (not zombie) processes that appeared since the watch was made and
            are this process's descendants or carry its token, less the allowed
            singletons; nothing is killed.
        """
        psutil = self._psutil
        allowed = self._allowed()
        found: dict[int, Any] = {}
        for proc in psutil.Process().children(recursive=True):
            if proc.pid not in allowed and self._alive(proc):
                found[proc.pid] = proc
        for pid in set(psutil.pids()) - self._existing - found.keys() - allowed:
            proc = self._marked(pid)
            if proc is not None and self._alive(proc):
                found[pid] = proc
        return list(found.values())

    def _describe(self, proc: Any) -> str:
        try:
            command = " ".join(proc.cmdline()) or proc.name()
        except self._psutil.Error:
            command = "?"
        command = command.replace("\n", "\\n")
        if len(command) > 100:
            command = command[:97] + "..."
        return f"{proc.pid} {command}"

    def check(self) -> None:
        """Kill whatever leaked and raise :class:`LeakedProcesses` naming it.

        A process still there after a short grace (about a second) is a leak; each is
        sent SIGKILL and waited for (about two seconds at most), never reaped.

        Raises:
            LeakedProcesses: Some processes leaked; the message names them (they are
                killed by then).
        """
        psutil = self._psutil
        leaked = self.leftovers()
        # A process already on its way out (a SIGKILL pending on a loaded machine, e.g. a
        # child's guard killed with its group a moment ago) is not a leak: a short grace.
        deadline = time.monotonic() + _SETTLE_S
        while leaked and time.monotonic() < deadline:
            time.sleep(0.02)
            # listed again, not just re-polled: launch's forkserver, started by a thread
            # that a cancelled spawn left running, is allowed once that thread records it
            leaked = self.leftovers()
        # Described before any is killed: killing a parent may take its children with it.
        described = [self._describe(proc) for proc in leaked]
        killed = []
        for proc in leaked:
            try:
                proc.kill()  # psutil refuses if the pid was reused since it was listed
                killed.append(proc)
            except psutil.Error:
                pass
        # Wait (bounded) until they are dead or zombies, so the next test starts clean;
        # never reap here: a Popen object of the test may still want the exit status.
        deadline = time.monotonic() + _KILL_WAIT_S
        while killed and time.monotonic() < deadline:
            killed = [proc for proc in killed if self._alive(proc)]
            if killed:
                time.sleep(0.02)
        if described:
            raise LeakedProcesses(f"processes left running (now killed): {described}")
