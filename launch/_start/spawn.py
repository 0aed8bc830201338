"""Spawning one child: build its boot message, then start it under the launch lock.

The launch lock serializes only the parent-side env overlay and the spawn itself: a
few milliseconds per child. Everything slow (the child's interpreter start, its
imports, its init, the READY handshake) happens outside it, concurrently.
"""

from __future__ import annotations

import errno
import os
import pickle
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from _launch_child._bootstrap import fork_main
from _launch_child._protocol import Boot, encode
from _launch_child._tree import load_prctl

from .._errors import SpawnFailed
from .._fds import FORK_GUARD, close_fd, close_in_forked_child, own_fd, own_socket
from .._spec import ProcessSpec
from .forkserver import FORKSERVER, ForkserverError
from .interpreter import child_interpreter_argv
from .lock import LAUNCH_LOCK
from .process import DirectProcess, ForkserverProcess, ProcessHandle


@dataclass
class Spawned:
    """What a successful spawn hands back to the group."""

    process: ProcessHandle
    sock: socket.socket
    lock_wait_s: float
    spawned_at: float
    output_fds: tuple[int, int] | None = None  # read ends of stdout, stderr ("prefix")


def build_boot(spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None) -> bytes:
    """The encoded boot frame, built in the parent so a bad target or kwargs fails before
    anything is spawned.

    The parent-side ``overlay`` goes into the child's env too (under ``spec.env``): a
    forkserver child inherits the server's environment, not the parent's.
    """
    target_pickle = None
    main_prep = None
    what = "target"  # the step being pickled, for the error
    try:
        if not isinstance(spec.target, str):
            target_pickle = pickle.dumps(spec.target, protocol=pickle.HIGHEST_PROTOCOL)
            if getattr(spec.target, "__module__", None) == "__main__":
                from multiprocessing import spawn as mp_spawn

                what = "__main__ preparation data"
                main_prep = mp_spawn.get_preparation_data(spec.name)
                main_prep.pop("authkey", None)  # multiprocessing's; launch does not use it
        what = "kwargs"
        kwargs_pickle = pickle.dumps(dict(spec.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        what = "boot message"
        boot = Boot(
            name=spec.name,
            target=spec.target if isinstance(spec.target, str) else None,
            target_pickle=target_pickle,
            kwargs_pickle=kwargs_pickle,
            env={**(overlay or {}), **spec.env},
            sys_path=list(sys.path),
            cwd=os.getcwd(),
            main_prep=main_prep,
        )
        return encode(("boot", boot))
    except Exception as exc:
        raise SpawnFailed(
            spec.name,
            group=group,
            failed_at=time.monotonic(),
            remote_type=type(exc).__qualname__,
            remote_message=str(exc),
            detail=f"its {what} could not be pickled; nothing was started",
        ) from exc


@contextmanager
def env_overlay(overlay: Mapping[str, str] | None) -> Iterator[None]:
    """Set ``overlay`` on ``os.environ`` and restore it; only ever under LAUNCH_LOCK."""
    if not overlay:
        yield
        return
    saved = {key: os.environ.get(key) for key in overlay}
    os.environ.update(overlay)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_spawn(fd: int, out: tuple[int, ...]) -> ProcessHandle:
    args = child_interpreter_argv("_bootstrap", f"spawn_main({fd}, {os.getpid()})")
    stdout, stderr = out if out else (None, None)
    popen = subprocess.Popen(
        args,
        pass_fds=(fd,),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )
    return DirectProcess(popen.pid, popen)


def _start_fork(fd: int, out: tuple[int, ...]) -> ProcessHandle:
    parent_pid = os.getpid()
    try:
        load_prctl()  # once here rather than in every forked child (no process state)
    except Exception:
        pass
    with FORK_GUARD:  # never between another thread's open and registration of an fd
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:  # never unwind into the parent's stack (this thread's copy of it)
            # First: none of launch's fds (siblings' sockets, pidfds, output pipes, device
            # locks, the forkserver's socket) may live on in this child.
            close_in_forked_child(keep=(fd, *out))
            for target, source in zip((1, 2), out, strict=False):
                os.dup2(source, target)
            for unused in out:
                os.close(unused)
            # Fresh streams on fds 1 and 2: the parent's may not write to them (a test
            # runner's capture, a StringIO), and their unflushed bytes are the parent's.
            for name, stream_fd in (("stdout", 1), ("stderr", 2)):
                try:
                    stream = open(stream_fd, "w", buffering=1, closefd=False)  # noqa: SIM115
                except OSError:
                    stream = open(os.devnull, "w")  # noqa: SIM115
                setattr(sys, name, stream)
            fork_main(fd, parent_pid)
        finally:
            os._exit(1)
    return DirectProcess(pid)


def _start_forkserver(fd: int, out: tuple[int, ...]) -> ProcessHandle:
    pid, status_fd = FORKSERVER.fork(fd, os.getpid(), out)
    return ForkserverProcess(pid, status_fd)


def _fd_shortage(exc: BaseException) -> str | None:
    """Words for a spawn that failed for want of file descriptors, naming the limit."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    if cause.errno == errno.EMFILE:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"this process is out of file descriptors: its RLIMIT_NOFILE soft limit is "
            f"{soft} (hard limit {hard}); raise it (ulimit -n, resource.setrlimit) or close "
            "fds (each child needs about four while it starts)"
        )
    if cause.errno == errno.ENFILE:
        return "the system is out of file descriptors (ENFILE: the fs.file-max limit)"
    return None


def spawn_failed(spec: ProcessSpec, group: str, exc: Exception, doing: str) -> SpawnFailed:
    """A :class:`SpawnFailed` for ``exc``, raised while ``doing``; an fd shortage is named
    with its limit."""
    shortage = _fd_shortage(exc)
    if shortage is not None:
        detail = f"{doing} failed: {shortage}"
    else:
        detail = doing + " failed"
        if isinstance(exc, ForkserverError) and str(exc):
            detail += f"\n{exc}"
    return SpawnFailed(
        spec.name,
        group=group,
        failed_at=time.monotonic(),
        remote_type=type(exc).__qualname__,
        remote_message=str(exc).splitlines()[0] if str(exc) else None,
        detail=detail,
    )


def _channel_fds(
    output: bool,
) -> tuple[socket.socket, socket.socket, tuple[int, ...], tuple[int, ...]]:
    """The control socketpair and (``output``) the stdout/stderr pipes, registered with
    launch's fd registry as they are made."""
    parent_sock, child_sock = (own_socket(sock) for sock in socket.socketpair())
    made: list[int] = []
    try:
        for _ in range(2 if output else 0):
            read_end, write_end = os.pipe()
            made += [own_fd(read_end), own_fd(write_end)]
    except BaseException:
        parent_sock.close()
        child_sock.close()
        for fd in made:
            close_fd(fd)
        raise
    return parent_sock, child_sock, tuple(made[0::2]), tuple(made[1::2])


def spawn(spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None) -> Spawned:
    """Start one child (blocking: run it in a worker thread). Raises :class:`SpawnFailed`."""
    requested = time.monotonic()
    with LAUNCH_LOCK:
        acquired = time.monotonic()
        # Made under the launch lock, as every fork is: a sibling forked by another
        # thread cannot inherit them in the instant before they are registered.
        try:
            parent_sock, child_sock, readers, writers = _channel_fds(spec.output == "prefix")
        except OSError as exc:
            raise spawn_failed(spec, group, exc, "creating its control socket") from exc
        try:
            with env_overlay(overlay):
                if spec.start_method == "spawn":
                    process = _start_spawn(child_sock.fileno(), writers)
                elif spec.start_method == "fork":
                    process = _start_fork(child_sock.fileno(), writers)
                else:
                    process = _start_forkserver(child_sock.fileno(), writers)
        except BaseException as exc:
            parent_sock.close()
            for fd in readers:
                close_fd(fd)
            if not isinstance(exc, Exception):
                raise
            raise spawn_failed(spec, group, exc, spec.start_method) from exc
        finally:
            child_sock.close()
            for fd in writers:
                close_fd(fd)
    output = (readers[0], readers[1]) if readers else None
    return Spawned(process, parent_sock, acquired - requested, time.monotonic(), output)
