"""The processes below a pid, found through /proc and pinned with pidfds (stdlib only).

Used on both sides of launch: the child bootstrap kills and reaps what is left of its
subtree before it exits, its guard does so when the launch parent dies, the parent does
so from outside before it SIGKILLs a child's process group, and launch's forkserver
kills the orphans its dead children leave behind.

A process found in /proc is *pinned* before it is signalled: a pidfd is opened, then
/proc is read again to check that the pid is still the child of the (pinned, not yet
exited) process whose children list named it. A signal sent through that pidfd can
never reach a process that reused the pid. Where pidfds are missing (Linux < 5.3), the
process's start time stands in for the pidfd (a narrow race remains there).
"""

from __future__ import annotations

import os
import select
import signal

TYPE_CHECKING = False  # not typing's: a fresh guard interpreter imports this module

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

_HAVE_CHILDREN_FILE = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
PR_SET_CHILD_SUBREAPER = 36


def read_stat(pid: int) -> tuple[str, int, int, int] | None:
    """``(state, ppid, pgid, start time)`` of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def pidfd_open(pid: int) -> int | None:
    """A pidfd of ``pid``, or None (gone, no pidfd support, or no fd left)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def readable(fd: int, timeout_ms: int = 0) -> bool:
    """True if ``fd`` polls readable within ``timeout_ms`` (a pidfd: the process exited)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(timeout_ms))
    except OSError:
        return True


class Proc:
    """One pinned process: signals reach it, or nothing."""

    __slots__ = ("pid", "pidfd", "start")

    def __init__(self, pid: int, pidfd: int | None, start: int | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.start = start

    @classmethod
    def pin(cls, pid: int, pidfd: int | None = None) -> Proc | None:
        """Pin ``pid`` as it is now (None if it is gone). The caller checks, after this,
        that the pid was the process it meant (see the module docstring)."""
        if pidfd is None:
            pidfd = pidfd_open(pid)
        stat = read_stat(pid)
        if stat is None:
            if pidfd is not None:
                os.close(pidfd)
            return None
        return cls(pid, pidfd, stat[3])

    @classmethod
    def parent(cls, pid: int) -> Proc | None:
        """This process's parent, which must be ``pid``; None if it is already gone."""
        proc = cls.pin(pid)
        if proc is not None and os.getppid() != pid:  # re-parented: the pid may be reused
            proc.close()
            return None
        return proc

    def exited(self) -> bool:
        """True once the process has exited (a zombie counts as exited)."""
        if self.pidfd is not None:
            return readable(self.pidfd)
        stat = read_stat(self.pid)
        return stat is None or stat[3] != self.start or stat[0] in ("Z", "X")

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process is still the one pinned; never raises."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                stat = read_stat(self.pid)
                if stat is not None and stat[3] == self.start:
                    os.kill(self.pid, sig)
        except OSError:
            pass

    def close(self) -> None:
        """Close the pidfd (the process is not signalled any more)."""
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = None


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` now (any of its threads)."""
    if not _HAVE_CHILDREN_FILE:  # a kernel without CONFIG_PROC_CHILDREN: scan /proc
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = read_stat(int(name))
                if stat is not None and stat[1] == pid:
                    found.append(int(name))
        return found
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            pass
    return found


class Subtree:
    """The descendants of ``root``, pinned as they are found; :meth:`scan` again finds
    those born (or re-parented) since. ``root_alive`` says whether ``root`` is still the
    process meant (pinned, not exited); while it is not, only the descendants already
    pinned are walked from."""

    def __init__(self, root: int, root_alive: Callable[[], bool]) -> None:
        self.root = root
        self.root_alive = root_alive
        self.known: dict[int, Proc] = {}

    def scan(self) -> list[Proc]:
        """Pin every descendant not pinned yet; return the new ones."""
        new: list[Proc] = []
        parents: list[tuple[int, Callable[[], bool]]] = [(self.root, self.root_alive)]
        parents.extend((p.pid, _alive_check(p)) for p in self.known.values())
        seen = {self.root, *self.known}
        while parents:
            parent, parent_alive = parents.pop()
            if not parent_alive():
                continue
            for pid in children(parent):
                if pid in seen:
                    continue
                seen.add(pid)
                pidfd = pidfd_open(pid)
                stat = read_stat(pid)  # after the pidfd: it says whom the pidfd pins
                if stat is None or stat[1] != parent or not parent_alive():
                    if pidfd is not None:  # not (or no longer provably) the listed child
                        os.close(pidfd)
                    continue
                proc = Proc(pid, pidfd, stat[3])
                self.known[pid] = proc
                new.append(proc)
                parents.append((pid, _alive_check(proc)))
        return new

    def signal(self, sig: int, rounds: int = 1) -> list[Proc]:
        """Scan and send ``sig`` to every descendant found, up to ``rounds`` times while
        new ones keep appearing (a process that is SIGKILLed can fork no more, so a few
        rounds catch what was being born). Returns every process signalled."""
        for proc in self.known.values():
            proc.signal(sig)
        for _ in range(rounds):
            new = self.scan()
            for proc in new:
                proc.signal(sig)
            if not new:
                break
        return list(self.known.values())

    def close(self) -> None:
        """Close every pidfd."""
        for proc in self.known.values():
            proc.close()
        self.known.clear()


def _alive_check(proc: Proc) -> Callable[[], bool]:
    return lambda: not proc.exited()


def wait_exited(procs: Iterable[Proc], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until every process in ``procs`` has exited."""
    import time

    deadline = time.monotonic() + timeout
    left = [p for p in procs if not p.exited()]
    while left:
        now = time.monotonic()
        if now >= deadline:
            return False
        fds = [p.pidfd for p in left if p.pidfd is not None]
        if len(fds) == len(left):
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                poller.poll(max(1, int((deadline - now) * 1000)))
            except OSError:
                pass
        else:
            time.sleep(min(0.02, deadline - now))
        left = [p for p in left if not p.exited()]
    return True


def kill_descendants(root: int, root_alive: Callable[[], bool], wait: float = 0.0) -> int:
    """SIGKILL every descendant of ``root`` (not ``root``), pinned first; with ``wait``,
    wait that long for them to exit. Returns how many were signalled."""
    tree = Subtree(root, root_alive)
    try:
        killed = tree.signal(signal.SIGKILL, rounds=4)
        if wait > 0:
            wait_exited(killed, wait)
        return len(killed)
    finally:
        tree.close()


def reap_children() -> None:
    """Reap every exited child of this process, without waiting."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


_prctl: Callable[..., int] | None = None


def load_prctl() -> Callable[..., int]:
    """``prctl(2)`` of libc, through ``_ctypes`` directly: not the ``ctypes`` package,
    which costs a few milliseconds to import in every child before its target. Built
    once per process; a fork inherits it (the launch parent builds it before a fork)."""
    global _prctl
    if _prctl is None:
        import _ctypes

        class _Int(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "i"

        class _Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = _Int

        class _ULong(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "L"

        libc = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]  # None: this process
        function = _Function(_ctypes.dlsym(libc, "prctl"))

        def prctl(option: int, arg: int) -> int:
            zero = _ULong(0)
            result: int = function(option, _ULong(arg), zero, zero, zero)
            return result

        _prctl = prctl
    return _prctl


def set_child_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; True if set."""
    try:
        return load_prctl()(PR_SET_CHILD_SUBREAPER, 1) == 0
    except Exception:
        return False
