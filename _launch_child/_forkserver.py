"""launch's own forkserver: a process that imports heavy modules once and forks children.

It is started by ``launch._forkserver`` with one end of a SOCK_SEQPACKET socketpair as
its only link to the parent. Requests (one datagram each, pickled):

- ``("preload", modules, sys_path, cwd)`` → ``("warm", None)`` or ``("warm", error)``:
  the import's traceback, or a refusal when an import initialised CUDA
- ``("fork", parent_pid)`` with two fds (the child's control socket, a status pipe's
  write end), plus two more for ``output="prefix"`` (pipes that become the child's
  stdout and stderr) → ``("forked", pid)``

When a child exits, the server kills what is left of its process group, reaps it and
writes its exit code (4 bytes, signed) to the status pipe. EOF on the request socket
means the parent is gone or done: the server exits (its children have their own death
watch on their control sockets).

Like the bootstrap, this module imports only the standard library.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
import traceback
from typing import Any

from ._bootstrap import fork_main

STATUS = struct.Struct("!i")


CUDA_REFUSED = "launch-forkserver-cuda: "  # prefix of the error text for a CUDA refusal


def cuda_initialized() -> str | None:
    """Why this process counts as having initialised CUDA, or None.

    A process that has initialised CUDA must not fork: its children cannot use the GPU
    (and may hang). Checked: torch's own flag, and an open ``/dev/nvidia-uvm``, which
    the CUDA driver opens in ``cuInit`` (NVML, which only queries, does not).
    """
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_initialized():
            return "torch.cuda.is_initialized() is True"
    except Exception:
        pass
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/nvidia-uvm"):
            return f"{target} is open (the CUDA driver was initialised)"
    return None


def _preload(modules: list[str], sys_path: list[str], cwd: str) -> str | None:
    sys.path[:] = sys_path
    os.chdir(cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException:
            return traceback.format_exc()
        reason = cuda_initialized()
        if reason is not None:
            return (
                f"{CUDA_REFUSED}importing {name!r} initialised CUDA in launch's forkserver "
                f"({reason}); children forked from it could not use the GPU, so it forks "
                "none. Keep CUDA calls out of import time (initialise CUDA in the child), "
                f"or leave {name!r} out of the preload list."
            )
    return None


def _reap(status_fds: dict[int, int]) -> None:
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        pid = info.si_pid
        try:
            os.killpg(pid, signal.SIGKILL)  # stragglers of its group, while the pgid is still held
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        fd = status_fds.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, STATUS.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            os.close(fd)


def serve(fd: int) -> None:
    """Serve fork requests on socket ``fd`` until the parent closes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status_fds: dict[int, int] = {}
    me = os.getpid()
    refused: str | None = None

    while True:
        try:
            readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(status_fds)
        if sock.fileno() not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            break
        request: tuple[Any, ...] = pickle.loads(data)
        if request[0] == "preload":
            error = refused or _preload(*request[1:])
            if error is not None and error.startswith(CUDA_REFUSED):
                refused = error  # for good: this process must not fork any more
            sock.send(pickle.dumps(("warm", error)))
        elif request[0] == "fork" and refused:
            for unexpected in fds:
                os.close(unexpected)
            sock.send(pickle.dumps(("refused", refused)))
        elif request[0] == "fork":
            control_fd, status_fd, *output_fds = fds
            pid = os.fork()
            if pid == 0:
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                os.close(status_fd)
                for other in status_fds.values():
                    os.close(other)
                for target, source in zip((1, 2), output_fds, strict=False):
                    os.dup2(source, target)
                    os.close(source)
                fork_main(control_fd, me)
            os.close(control_fd)
            for source in output_fds:
                os.close(source)
            status_fds[pid] = status_fd
            sock.send(pickle.dumps(("forked", pid)))
        else:
            for unexpected in fds:
                os.close(unexpected)
    for status_fd in status_fds.values():
        os.close(status_fd)
