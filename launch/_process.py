"""Handles on a started process: wait for its exit, signal it, kill its group, reap it.

Two kinds, chosen by start method:

- :class:`DirectProcess` (``spawn``, ``fork``): our own child. Its exit is seen through a
  pidfd without reaping it, so the pid, and with it the process group id, stays reserved
  while the group's stragglers are killed; then it is reaped.
- :class:`ForkserverProcess` (``forkserver``): a child of launch's forkserver, which kills
  the group's stragglers, reaps it and writes its exit code to a status pipe.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess

import anyio

_POLL_S = 0.05
_STATUS = struct.Struct("!i")
EXITCODE_UNKNOWN = 255


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
    """Common surface of a started child process."""

    pid: int
    returncode: int | None = None

    async def wait_exited(self) -> None:
        raise NotImplementedError

    def reap(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release file descriptors; call only when no task waits on this handle."""

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            _signal(self.pid, sig, group=False)

    def kill_group(self) -> None:
        """SIGKILL to the child's whole process group (it leads its own, see the bootstrap)."""
        if self.returncode is None:
            _signal(self.pid, signal.SIGKILL, group=True)


class DirectProcess(ProcessHandle):
    """A child of this process, started by ``subprocess.Popen`` or ``os.fork``."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self._popen = popen
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # kernel < 5.3: poll instead
            self._pidfd = None

    def _has_exited(self) -> bool:
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None

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
        return self.returncode

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class ForkserverProcess(ProcessHandle):
    """A child forked by launch's forkserver; its exit code arrives on ``status_fd``."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self._status_fd: int | None = status_fd
        os.set_blocking(status_fd, False)
        self._buf = b""

    async def wait_exited(self) -> None:
        while self.returncode is None and self._status_fd is not None:
            try:
                data = os.read(self._status_fd, _STATUS.size - len(self._buf))
            except BlockingIOError:
                await anyio.wait_readable(self._status_fd)
                continue
            if not data:  # the forkserver itself is gone
                self.returncode = EXITCODE_UNKNOWN
                return
            self._buf += data
            if len(self._buf) == _STATUS.size:
                (self.returncode,) = _STATUS.unpack(self._buf)

    def reap(self) -> int:
        return EXITCODE_UNKNOWN if self.returncode is None else self.returncode

    def close(self) -> None:
        if self._status_fd is not None:
            os.close(self._status_fd)
            self._status_fd = None
