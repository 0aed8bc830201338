"""Handles on a started process: wait for its exit, signal it, kill its group, reap it.

Two kinds, chosen by start method:

- :class:`DirectProcess` (``spawn``, ``fork``): our own child. Its exit is seen through a
  pidfd without reaping it, so the pid, and with it the process group id, stays reserved
  while the group's stragglers are killed; then it is reaped.
- :class:`ForkserverProcess` (``forkserver``): a child of launch's forkserver, which kills
  the group's stragglers, reaps it and writes its exit code to a status pipe; a pidfd
  pins it, and still shows its exit if the server dies first.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess

import anyio

from _launch_child._tree import kill_descendants

from .._fds import close_fd, own_fd
from .forkserver import FORKSERVER

_POLL_S = 0.05
_STATUS = struct.Struct("!i")
_SERVER_DEATH_WAIT_S = 0.5


def _signal(pid: int, sig: int, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (R, S, D, Z, T, ...), or '?' if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return "?"
    return stat.rpartition(")")[2].split()[0]


class ProcessHandle:
    """Common surface of a started child process.

    Attributes:
        pid (int): The child's process id (on its own host).
        returncode (int | None): Its exit code once reaped (negative: signal).
        exit_unknown (str | None): Why the exit code is None although the child has
            exited (its forkserver died, contact with its node was lost), naming where;
            None otherwise.
    """

    pid: int
    returncode: int | None = None
    exit_unknown: str | None = None

    async def wait_exited(self) -> None:
        raise NotImplementedError

    def reap(self) -> int | None:
        """Reap the exited process; its exit code (negative: signal), None if unknown."""
        raise NotImplementedError

    def close(self) -> None:
        """Release file descriptors; call only when no task waits on this handle."""

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            _signal(self.pid, sig, group=False)

    def kill_group(self) -> None:
        """SIGKILL to the child's subtree and to its whole process group (it leads its
        own, see the bootstrap).

        The subtree first: walked through /proc while the child still holds it together
        (it is the subreaper of its descendants), each process pinned with a pidfd before
        it is signalled. So descendants that left the group (daemons) go too.
        """
        if self.returncode is None:
            kill_descendants(self.pid, self._running)
            _signal(self.pid, signal.SIGKILL, group=True)

    def _running(self) -> bool:
        """True if ``pid`` is provably still this child, not exited (its descendants can
        then be walked from it); a handle that cannot tell says False."""
        return False


class DirectProcess(ProcessHandle):
    """A child of this process, started by ``subprocess.Popen`` or ``os.fork``."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self._popen = popen
        try:
            self._pidfd: int | None = own_fd(os.pidfd_open(pid))
        except (AttributeError, OSError):  # kernel < 5.3: poll instead
            self._pidfd = None

    def _has_exited(self) -> bool:
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None

    def _running(self) -> bool:
        # Our own unreaped child: its pid cannot have been reused.
        try:
            return self.returncode is None and not self._has_exited()
        except ChildProcessError:
            return False

    async def wait_exited(self) -> None:
        if self.returncode is not None:
            return
        if self._pidfd is not None:
            await anyio.wait_readable(self._pidfd)
            return
        while not self._has_exited():
            await anyio.sleep(_POLL_S)

    def reap(self) -> int:
        if self.returncode is None:
            # While unreaped, the pid cannot be reused, so this reaches only its own group.
            _signal(self.pid, signal.SIGKILL, group=True)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            if self._popen is not None:
                self._popen.returncode = self.returncode
            _reap_adopted(self.pid)
        return self.returncode

    def close(self) -> None:
        if self._pidfd is not None:
            close_fd(self._pidfd)
            self._pidfd = None


def _reap_adopted(pgid: int) -> None:
    """Reap, without waiting, members of a child's group that have become children of
    this process: its guard, when this process is init (a container's first process)
    or a subreaper. Only processes of that group that are ours can be reaped here."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class ForkserverProcess(ProcessHandle):
    """A child forked by launch's forkserver.

    While the server lives, it reaps the child and writes its exit code to ``status_fd``.
    A pidfd, opened as soon as the server has reported the fork, pins the child: signals
    go through it, so they never reach a process that reused the pid, and when the server
    dies (EOF on the status pipe) the child's exit is still seen through it. Its exit code
    is then lost with the server: ``returncode`` stays None and :attr:`exit_unknown` says
    why, unless this process is the child's subreaper by then and reaps it itself.
    """

    def __init__(self, pid: int, status_fd: int, server_pid: int | None = None) -> None:
        self.pid = pid
        self.server_pid = FORKSERVER.pid if server_pid is None else server_pid
        self._status_fd: int | None = status_fd
        os.set_blocking(status_fd, False)
        self._buf = b""
        self._exited = False
        self._server_gone = False
        self.exit_unknown: str | None = None
        self._pidfd = self._pin()

    def _pin(self) -> int | None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # kernel < 5.3, or the child is already gone
            return None
        # The pidfd is the child's if the pid was still the child's when it was opened:
        # it was if the pid is now a child of the server, which forks nothing else
        # meanwhile (fork requests are serialized under the launch lock).
        if self.server_pid is None or _ppid(self.pid) != self.server_pid:
            os.close(pidfd)
            return None
        return own_fd(pidfd)

    async def wait_exited(self) -> None:
        while not self._exited and not self._server_gone and self._status_fd is not None:
            try:
                data = os.read(self._status_fd, _STATUS.size - len(self._buf))
            except BlockingIOError:
                await anyio.wait_readable(self._status_fd)
                continue
            if not data:  # the forkserver is gone, and the exit code with it
                self._server_gone = True
                break
            self._buf += data
            if len(self._buf) == _STATUS.size:
                (self.returncode,) = _STATUS.unpack(self._buf)
                self._exited = True
        if self._exited:
            return
        if self._pidfd is not None:
            await anyio.wait_readable(self._pidfd)
            self.returncode = self._reap_orphan(self._pidfd)
        self._exited = True
        if self.returncode is None:
            self.exit_unknown = f"exit status unknown: {await self._server_death()}"

    @staticmethod
    def _reap_orphan(pidfd: int) -> int | None:
        """Its exit code, if the child has become ours to reap (we are its subreaper)."""
        try:
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except (AttributeError, OSError):  # ChildProcessError: init (or another) reaps it
            return None
        if info is None:
            return None
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        return -info.si_status if killed else info.si_status

    async def _server_death(self) -> str:
        """How the forkserver died, in words (its exit may take a moment to be seen)."""
        if self.server_pid is None:
            return "its parent, launch's forkserver, is gone"
        with anyio.move_on_after(_SERVER_DEATH_WAIT_S):
            while (how := FORKSERVER.death_of(self.server_pid)) is None:
                await anyio.sleep(_POLL_S)
        return (
            f"its parent, launch's forkserver (pid {self.server_pid}), {how or 'is gone'} before it"
        )

    def reap(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self._exited:
            return
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except OSError:  # ProcessLookupError: it has exited meanwhile
                pass
        elif not self._server_gone:
            _signal(self.pid, sig, group=False)

    def kill_group(self) -> None:
        """SIGKILL to its subtree and process group while it has not exited (it holds its
        pid, and with it the group id, until then), and to the child through its pidfd."""
        if self._exited or (self._pidfd is None and self._server_gone):
            return
        if self._pidfd is None or self._running():
            super().kill_group()
        self.send_signal(signal.SIGKILL)

    def _running(self) -> bool:
        # Not exited by its pidfd: its pid cannot have been reused.
        return not self._exited and self._pidfd is not None and not _readable(self._pidfd)

    def close(self) -> None:
        for fd in (self._status_fd, self._pidfd):
            if fd is not None:
                close_fd(fd)
        self._status_fd = self._pidfd = None


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return int(stat.rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
