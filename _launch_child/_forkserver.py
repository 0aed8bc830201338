"""launch's own forkserver: a process that imports heavy modules once and forks children.

It is started by ``launch._forkserver`` with one end of a SOCK_SEQPACKET socketpair as
its only link to the parent. Requests (one datagram each, pickled):

- ``("preload", modules, sys_path, cwd)`` → ``("warm", None)`` or ``("warm", error)``:
  the import's traceback, or a refusal when an import initialised CUDA
- ``("fork", parent_pid)`` with two fds (the child's control socket, a status pipe's
  write end), plus two more for ``output="prefix"`` (pipes that become the child's
  stdout and stderr) → ``("forked", pid)``

When a child exits, the server kills what is left of its process group, reaps it and
writes its exit code (4 bytes, signed) to the status pipe. EOF on the request socket, or
the exit of the launch parent (the server's parent, watched through a pidfd), means the
parent is gone or done: the server exits. Its children outlive it: each watches the
launch parent itself (the server hands them its pidfd), not the server.

The server is the child subreaper of its children's descendants: when a child dies
without cleaning up after itself (SIGKILL), what it leaves behind outside its process
group (daemons: double fork, ``setsid``) is re-parented to the server, which SIGKILLs
and reaps it. ``poll``, not ``select``: the request socket keeps the parent's fd number,
which may be above 1023.

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
from typing import Any, NoReturn

from ._bootstrap import fork_main
from ._tree import Proc, children, read_stat, set_child_subreaper

STATUS = struct.Struct("!i")


CUDA_REFUSED = "launch-forkserver-cuda: "  # prefix of the error text for a CUDA refusal


def cuda_initialized() -> str | None:
    """Why this process counts as having initialised CUDA, or None.

    A process that has initialised CUDA must not fork: its children cannot use the GPU
    (and may hang). Checked: torch's own flag, and an open ``/dev/nvidia-uvm``, which
    the CUDA driver opens in ``cuInit`` (NVML may too: the driver is asked then).
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
        if target.startswith("/dev/nvidia-uvm") and _cuda_driver_initialized():
            return f"{target} is open (the CUDA driver was initialised)"
    return None


def _cuda_driver_initialized() -> bool:
    """Whether ``cuInit`` ran here: NVML too opens ``/dev/nvidia-uvm`` on some hosts
    (vLLM 0.26's platform probe, 4 H200), and forking after NVML is safe. Asks the CUDA
    driver only if it is already loaded (``RTLD_NOLOAD``): ``cuDeviceGetCount`` answers
    CUDA_ERROR_NOT_INITIALIZED (3) before ``cuInit`` and initialises nothing."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libcuda.so" in line}
    except OSError:
        return True  # cannot tell: the open device file decides, as before
    for path in paths:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 3:
                return True
        except (OSError, AttributeError):
            return True
    return False


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
            break
        if info is None:
            break
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
    _kill_orphans(status_fds)


def _kill_orphans(status_fds: dict[int, int]) -> None:
    """SIGKILL the server's adopted children that belong to no live child's group: what a
    dead child left behind. Spared: a live child's group (its guard is adopted too), and
    the server's own group (helpers that a preloaded module started). The killed are
    reaped at their SIGCHLD. Signalling by pid is safe here: an unreaped child of ours
    cannot have its pid reused."""
    me = os.getpid()
    spared = {*status_fds, os.getpgrp()}
    for pid in children(me):
        if pid in status_fds:
            continue
        stat = read_stat(pid)
        if stat is not None and stat[1] == me and stat[2] not in spared:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _pin_parent() -> Proc | None:
    """The launch parent (this server's parent), pinned; None if it is already gone."""
    return Proc.parent(os.getppid())


def serve(fd: int) -> NoReturn:
    """Serve fork requests on socket ``fd`` until the parent closes it or exits; then
    exit at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    launcher = _pin_parent()
    if launcher is None:
        os._exit(0)
    set_child_subreaper()
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status_fds: dict[int, int] = {}
    refused: str | None = None
    poller = select.poll()
    for watched in (sock.fileno(), wake_r, launcher.pidfd):
        if watched is not None:
            poller.register(watched, select.POLLIN)

    while True:
        events = dict(poller.poll(None if launcher.pidfd is not None else 200))
        if wake_r in events:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(status_fds)
        if launcher.pidfd is None:
            if launcher.exited():
                break
        elif events.get(launcher.pidfd, 0) & select.POLLIN:
            break
        if sock.fileno() not in events:
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
                fork_main(control_fd, launcher.pid, launcher.pidfd)
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
    # Not a return into the interpreter's own exit: with torch or vLLM preloaded, that
    # takes seconds, while the launch parent is gone or done. Children still running are
    # taken down by their guards.
    os._exit(0)
