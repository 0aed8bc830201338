"""The guard: one tiny process per child that takes the child's tree down when the
launch parent dies, even when the child itself cannot (stdlib only).

The bootstrap's death-watch thread cannot run while the child's main thread holds the
GIL in a C call, and a child that dies of the group's SIGTERM can no longer SIGKILL the
grandchildren that ignore it. So right after ``setsid``, while the child is still
single-threaded, the bootstrap starts a guard. The guard:

- stays in the child's process group, which keeps the group id in use: a ``killpg``
  from it can never reach a group that reused the id;
- is not the child's child (the middle process exits), so the target's own ``wait()``
  calls never see it;
- ignores SIGTERM, SIGINT and SIGHUP, and holds no fd but /dev/null and two pidfds,
  of the launch parent and of the child (no control socket, output pipe or lock);
- when the launch parent exits: SIGTERM to the group and to the child's subtree (also
  what left the group), up to :data:`GRACE_S` for the child to exit, then SIGKILL to
  the subtree and the group, the guard itself last;
- when the child exits without stopping it first (SIGKILL, ``os._exit``, a crash):
  SIGKILL to what is left of the group.

A child that exits in order SIGKILLs its guard (through a pidfd) and waits for it.

How it is started depends on the child's size. A small child (a fresh ``spawn``
interpreter, a fork of a small forkserver) forks twice: about a millisecond there, plus
copy-on-write faults for the pages it writes afterwards that it shares with the guard.
A larger one (a fork of a host, or of a forkserver that imported torch) would pay for
both in proportion to its memory, tens of milliseconds with torch: it starts ``/bin/sh``
with ``posix_spawn`` (nothing copied), which starts a fresh ``python -I -S`` in the
background, hands it the two pidfds and exits. That interpreter's startup (about 10 ms
of CPU) runs beside the child's own, not before it.
"""

from __future__ import annotations

import os
import select
import signal
import sys

from ._tree import Proc, Subtree, read_stat, wait_exited

TYPE_CHECKING = False  # not typing's: a fresh guard interpreter imports this module

if TYPE_CHECKING:
    from typing import NoReturn

GRACE_S = 0.5
"""After the launch parent's death: how long the child's tree has between SIGTERM and
SIGKILL."""
_FALLBACK_POLL_MS = 100  # without pidfds: how often the guard looks at the two processes
_STOP_WAIT_S = 1.0
_LARGE_ANON_KB = 16 << 10  # from here on, a fresh interpreter costs less than two forks
_SHELL = "/bin/sh"
# $0: the interpreter, $1: the code. Backgrounded (same process group: no job control),
# so that the shell exits at once and the guard is orphaned, as with a double fork.
_SHELL_SCRIPT = '"$0" -I -S -c "$1" </dev/null >/dev/null 2>&1 & echo $!'


class Guard:
    """The child's handle on its guard."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        """The guard's pid."""
        return self.proc.pid

    def stop(self) -> None:
        """SIGKILL the guard and wait (bounded) until it is gone."""
        self.proc.signal(signal.SIGKILL)
        wait_exited([self.proc], _STOP_WAIT_S)
        self.proc.close()


class Starting:
    """A guard being started: the middle process (a fork, or ``/bin/sh``) runs and will
    write the guard's pid to ``pipe``; :meth:`wait` finishes.

    In two steps so that the middle process exits while the child waits for its boot
    frame, off the critical path.
    """

    def __init__(self, middle: int, pipe: int) -> None:
        self._middle = middle
        self._pipe = pipe

    def wait(self) -> Guard | None:
        """Reap the middle process and pin the guard; None if it could not be started.
        Call with SIGTERM blocked."""
        try:
            os.waitpid(self._middle, 0)
            data = os.read(self._pipe, 32)
        finally:
            os.close(self._pipe)
        try:
            pid = int(data)
        except ValueError:  # nothing written: the middle process could not start it
            return None
        proc = Proc.pin(pid)
        stat = read_stat(pid)
        # Only a process of our own group is ours to signal: the guard, not a reused pid.
        if proc is None or stat is None or stat[2] != os.getpgrp():
            if proc is not None:
                proc.close()
            return None
        return Guard(proc)


def start(launcher: Proc) -> Starting | None:
    """Start this child's guard, watching ``launcher``; None if it could not be started
    (the death-watch thread is then the only watch). Call with SIGTERM blocked, from a
    single-threaded process that leads its own process group, and before it becomes a
    subreaper (the guard must not become its child)."""
    me = Proc.pin(os.getpid())
    if me is None:
        return None
    try:
        starting = None
        if _anonymous_kb() >= _LARGE_ANON_KB:
            starting = _start_fresh(launcher, me)
        return starting or _start_forked(launcher, me)
    finally:
        me.close()


def _start_forked(launcher: Proc, me: Proc) -> Starting | None:
    r, w = os.pipe()
    try:
        middle = os.fork()
    except OSError:
        for fd in (r, w):
            os.close(fd)
        return None
    if middle == 0:  # pragma: no cover - the middle process
        code = 1
        try:
            guard = os.fork()
            if guard == 0:
                _main(launcher, me)
            os.write(w, str(guard).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return Starting(middle, r)


def _start_fresh(launcher: Proc, me: Proc) -> Starting | None:
    """``/bin/sh`` starts ``python -I -S`` running :func:`_fresh_main` in the background,
    the two pidfds inherited; None where that is not possible."""
    interpreter = _interpreter()
    if interpreter is None or launcher.pidfd is None or me.pidfd is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from _launch_child._guard import "
        f"_fresh_main; _fresh_main({launcher.pid}, {launcher.pidfd}, {me.pid}, {me.pidfd})"
    )
    passed = (launcher.pidfd, me.pidfd)
    r, w = os.pipe()
    try:
        for fd in passed:  # this process is single-threaded here: no other spawn sees it
            os.set_inheritable(fd, True)
        shell = os.posix_spawn(
            _SHELL,
            ["sh", "-c", _SHELL_SCRIPT, interpreter, code],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, w, 1),
            ],
        )
    except OSError:
        os.close(r)
        return None
    finally:
        for fd in passed:
            os.set_inheritable(fd, False)
        os.close(w)
    return Starting(shell, r)


def _anonymous_kb() -> int:
    """This process's anonymous memory (``RssAnon``): what a fork shares copy-on-write."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _interpreter() -> str | None:
    """This process's own interpreter binary, or None (an embedding host: never run
    ``sys.executable`` unless it is the very binary running now)."""
    try:
        if sys.executable and os.path.realpath(sys.executable) == os.path.realpath(
            "/proc/self/exe"
        ):
            return sys.executable
    except OSError:
        pass
    return None


def _fresh_main(  # pragma: no cover - the guard, in a fresh interpreter
    launcher_pid: int, launcher_pidfd: int, child_pid: int, child_pidfd: int
) -> NoReturn:
    """Entry of a guard started by :func:`_start_fresh`."""
    _main(Proc(launcher_pid, launcher_pidfd, None), Proc(child_pid, child_pidfd, None))


def _main(launcher: Proc, child: Proc) -> NoReturn:  # pragma: no cover - the guard
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        keep = {0, 1, 2, *(p.pidfd for p in (launcher, child) if p.pidfd is not None)}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        try:
            with open("/proc/self/comm", "w") as comm:  # what ps and top show
                comm.write("launch-guard")
        except OSError:
            pass
        _watch(launcher, child, os.getpgrp())
    finally:
        os._exit(0)


def _watch(launcher: Proc, child: Proc, pgid: int) -> None:  # pragma: no cover - the guard
    poller = select.poll()
    fds = [p.pidfd for p in (launcher, child) if p.pidfd is not None]
    for fd in fds:
        poller.register(fd, select.POLLIN)
    timeout = -1 if len(fds) == 2 else _FALLBACK_POLL_MS
    while True:
        poller.poll(timeout)
        if child.exited():
            _killpg(pgid, signal.SIGKILL)
            return
        if launcher.exited():
            _parent_gone(child, pgid)
            return


def _parent_gone(child: Proc, pgid: int) -> None:  # pragma: no cover - the guard
    tree = Subtree(child.pid, lambda: not child.exited())
    try:
        tree.signal(signal.SIGTERM)
        _killpg(pgid, signal.SIGTERM)
        wait_exited([child], GRACE_S)
        tree.signal(signal.SIGKILL, rounds=4)
        child.signal(signal.SIGKILL)
    finally:
        _killpg(pgid, signal.SIGKILL)  # the group, and this guard with it


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
