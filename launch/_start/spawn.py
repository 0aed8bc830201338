"""The start step of a child's run: build its boot message, then start it under the
launch lock, and hand back a :class:`Spawned`.

The launch lock serializes only the parent-side env overlay and the spawn itself: a
few milliseconds per child. Everything slow (the child's interpreter start, its
imports, its init, the READY handshake) happens outside it, concurrently.

How one process is started is a table keyed by start method (:data:`METHODS`): a fresh
interpreter, a fork of the launcher, or a fork of launch's preloaded forkserver (which
is first waited for, outside the lock).

The seam for placement backends (issue 17) is one function wide: a child's run calls a
:data:`Starter` once, :func:`start_child` by default, and gets a :class:`Spawned`. A
backend that runs the child elsewhere (a Ray actor on another node) substitutes its own
starter, returning a :class:`Spawned` whose ``process`` is a
:class:`~launch._start.process.ProcessHandle` subclass for the remote process, whose
``sock`` is a TCP socket to the remote child's bootstrap, and whose ``node`` and
``clock_offset`` say where it runs and how that host's clock differs from this one's.
Everything after the start (boot frame, handshake, supervision, teardown) is the same.
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
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio

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


@dataclass(frozen=True)
class Spawned:
    """What a successful start hands back to the child's run.

    Attributes:
        process: The handle the run waits on, signals and reaps.
        sock: The parent's end of the control socket (a socketpair here; a TCP socket
            to a remote child).
        lock_wait_s: Seconds the start waited for the launch lock.
        spawned_at: ``time.monotonic()`` (this process's) when the process existed.
        output_fds: The read ends of the child's stdout and stderr (``output="prefix"``),
            or None.
        requested_at: When the start asked for the process, after any wait for the
            starter itself (launch's forkserver warming up); None: when the run called
            the starter.
        node: Where the child runs: None on this machine; a placement backend's node
            object otherwise.
        clock_offset: The child host's ``time.monotonic()`` minus this process's: the
            run subtracts it from every time the child reports.
    """

    process: ProcessHandle
    sock: socket.socket
    lock_wait_s: float
    spawned_at: float
    output_fds: tuple[int, int] | None = None  # read ends of stdout, stderr ("prefix")
    requested_at: float | None = None
    node: object | None = None
    clock_offset: float = 0.0


Starter = Callable[[ProcessSpec, str, Mapping[str, str] | None], Awaitable[Spawned]]
"""The start step of a child's run: ``(spec, group name, env overlay) -> Spawned``.
It raises :class:`SpawnFailed` when nothing could be started, and must not be
cancellable once its process exists (it returns the process, or kills it)."""


def build_boot(spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None) -> bytes:
    """The encoded boot frame, built in the parent so a bad target or kwargs fails before
    anything is spawned.

    The parent-side ``overlay`` goes into the child's env too (under ``spec.env``): a
    forkserver child inherits the server's environment, not the parent's.

    Raises:
        SpawnFailed: The target, its ``__main__`` preparation data or the kwargs cannot
            be pickled.
    """
    step = "target"  # the step being pickled, for the error
    try:
        target_pickle = _pickle_target(spec)
        step = "__main__ preparation data"
        main_prep = _main_prep(spec)
        step = "kwargs"
        kwargs_pickle = pickle.dumps(dict(spec.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        step = "boot message"
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
        return encode(boot)
    except Exception as exc:
        raise SpawnFailed(
            spec.name,
            group=group,
            failed_at=time.monotonic(),
            remote_type=type(exc).__qualname__,
            remote_message=str(exc),
            detail=f"its {step} could not be pickled; nothing was started",
        ) from exc


def _pickle_target(spec: ProcessSpec) -> bytes | None:
    """A callable target pickled by reference; None for a ``"module:qualname"`` string."""
    if isinstance(spec.target, str):
        return None
    return pickle.dumps(spec.target, protocol=pickle.HIGHEST_PROTOCOL)


def _main_prep(spec: ProcessSpec) -> dict[str, Any] | None:
    """For a callable target defined in ``__main__``, multiprocessing's data to re-import
    the script in the child as ``__mp_main__``; else None."""
    if isinstance(spec.target, str) or getattr(spec.target, "__module__", None) != "__main__":
        return None
    from multiprocessing import spawn as mp_spawn

    main_prep: dict[str, Any] = mp_spawn.get_preparation_data(spec.name)
    main_prep.pop("authkey", None)  # multiprocessing's; launch does not use it
    return main_prep


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


METHODS: dict[str, Callable[[int, tuple[int, ...]], ProcessHandle]] = {
    "spawn": _start_spawn,
    "fork": _start_fork,
    "forkserver": _start_forkserver,
}
"""How one process is started, by start method: ``(control fd, output fds) -> handle``;
called under the launch lock with the env overlay applied."""


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


@dataclass
class _ChannelFds:
    """The control socketpair and the stdout/stderr pipes of one child being started."""

    parent_sock: socket.socket
    child_sock: socket.socket
    readers: tuple[int, ...]  # the parent's ends of the pipes
    writers: tuple[int, ...]  # the child's

    def close_childs(self) -> None:
        """Close the child's ends in the parent (it has its copies once started)."""
        self.child_sock.close()
        for fd in self.writers:
            close_fd(fd)

    def close_parents(self) -> None:
        """Close the parent's ends (nothing was started)."""
        self.parent_sock.close()
        for fd in self.readers:
            close_fd(fd)


def _channel_fds(output: bool) -> _ChannelFds:
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
    return _ChannelFds(parent_sock, child_sock, tuple(made[0::2]), tuple(made[1::2]))


def spawn(spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None) -> Spawned:
    """Start one child on this machine (blocking: run it in a worker thread).

    Args:
        spec: The child; its ``start_method`` picks the entry of :data:`METHODS`.
        group: The group's name, for errors.
        overlay: Parent-side env, set on ``os.environ`` only while the process starts.

    Returns:
        The started process, the parent's end of its control socket and its output fds.

    Raises:
        SpawnFailed: Nothing was started (out of fds, a fork or exec error, a forkserver
            error); every fd made for it is closed.
    """
    start = METHODS[spec.start_method]
    requested = time.monotonic()
    with LAUNCH_LOCK:
        acquired = time.monotonic()
        # Made under the launch lock, as every fork is: a sibling forked by another
        # thread cannot inherit them in the instant before they are registered.
        try:
            fds = _channel_fds(spec.output == "prefix")
        except OSError as exc:
            raise spawn_failed(spec, group, exc, "creating its control socket") from exc
        process = _start_process(start, spec, group, overlay, fds)
    return Spawned(
        process,
        fds.parent_sock,
        lock_wait_s=acquired - requested,
        spawned_at=time.monotonic(),
        output_fds=(fds.readers[0], fds.readers[1]) if fds.readers else None,
        requested_at=requested,
    )


def _start_process(
    start: Callable[[int, tuple[int, ...]], ProcessHandle],
    spec: ProcessSpec,
    group: str,
    overlay: Mapping[str, str] | None,
    fds: _ChannelFds,
) -> ProcessHandle:
    """``start`` with the env overlay applied; the child's fds are closed here either
    way, the parent's too when it fails."""
    try:
        with env_overlay(overlay):
            return start(fds.child_sock.fileno(), fds.writers)
    except BaseException as exc:
        fds.close_parents()
        if not isinstance(exc, Exception):
            raise
        raise spawn_failed(spec, group, exc, spec.start_method) from exc
    finally:
        fds.close_childs()


async def _forkserver_warm(spec: ProcessSpec, group: str) -> None:
    """Wait until launch's forkserver has imported its preloads (starting it if needed),
    outside the launch lock, so a slow preload blocks no other spawn; cancellable."""
    try:
        await anyio.to_thread.run_sync(FORKSERVER.wait_warm, abandon_on_cancel=True)
    except ForkserverError as exc:
        raise SpawnFailed(
            spec.name, group=group, failed_at=time.monotonic(), detail=str(exc)
        ) from exc
    except OSError as exc:  # starting the server: out of fds, say
        raise spawn_failed(spec, group, exc, "starting launch's forkserver") from exc


async def start_child(
    spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None
) -> Spawned:
    """The default :data:`Starter`: start ``spec`` on this machine.

    A forkserver child first waits for the server to be warm (cancellable); the spawn
    itself runs in a worker thread that a cancel does not abandon, so a process that
    was started is always returned, to be owned by the run.

    Args:
        spec: The child to start.
        group: The group's name, for errors.
        overlay: Parent-side env for the start (see :func:`spawn`).

    Returns:
        The :class:`Spawned` child.

    Raises:
        SpawnFailed: Nothing was started.
    """
    if spec.start_method == "forkserver":
        await _forkserver_warm(spec, group)
    return await anyio.to_thread.run_sync(spawn, spec, group, overlay)
