"""Spawning one child: build its boot message, then start it under the launch lock.

The launch lock serializes only the parent-side env overlay and the spawn itself: a
few milliseconds per child. Everything slow (the child's interpreter start, its
imports, its init, the READY handshake) happens outside it, concurrently.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from _launch_child._protocol import Boot, encode

from ._errors import SpawnFailed
from ._forkserver import FORKSERVER, ForkserverError
from ._interpreter import child_interpreter_argv
from ._lock import LAUNCH_LOCK
from ._process import DirectProcess, ForkserverProcess, ProcessHandle
from ._spec import ProcessSpec


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


def _start_fork(
    fd: int, parent_fd: int, out: tuple[int, ...], close: tuple[int, ...]
) -> ProcessHandle:
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(parent_fd)
        for target, source in zip((1, 2), out, strict=False):
            os.dup2(source, target)
        for unused in (*out, *close):
            os.close(unused)
        if out:  # the parent's sys.stdout may not write to fd 1 (a test runner's capture)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        from _launch_child._bootstrap import fork_main

        fork_main(fd, parent_pid)
    return DirectProcess(pid)


def _start_forkserver(fd: int, out: tuple[int, ...]) -> ProcessHandle:
    pid, status_fd = FORKSERVER.fork(fd, os.getpid(), out)
    return ForkserverProcess(pid, status_fd)


def spawn(spec: ProcessSpec, group: str, overlay: Mapping[str, str] | None = None) -> Spawned:
    """Start one child (blocking: run it in a worker thread). Raises :class:`SpawnFailed`."""
    parent_sock, child_sock = socket.socketpair()
    readers: tuple[int, ...] = ()
    writers: tuple[int, ...] = ()
    if spec.output == "prefix":
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        readers, writers = (out_r, err_r), (out_w, err_w)
    requested = time.monotonic()
    try:
        with LAUNCH_LOCK:
            acquired = time.monotonic()
            with env_overlay(overlay):
                if spec.start_method == "spawn":
                    process = _start_spawn(child_sock.fileno(), writers)
                elif spec.start_method == "fork":
                    process = _start_fork(
                        child_sock.fileno(), parent_sock.fileno(), writers, readers
                    )
                else:
                    process = _start_forkserver(child_sock.fileno(), writers)
    except BaseException as exc:
        parent_sock.close()
        for fd in readers:
            os.close(fd)
        if not isinstance(exc, Exception):
            raise
        detail = str(exc) if isinstance(exc, ForkserverError) else ""
        raise SpawnFailed(
            spec.name,
            group=group,
            failed_at=time.monotonic(),
            remote_type=type(exc).__qualname__,
            remote_message=str(exc).splitlines()[0] if str(exc) else None,
            detail=f"{spec.start_method} failed" + (f"\n{detail}" if detail else ""),
        ) from exc
    finally:
        child_sock.close()
        for fd in writers:
            os.close(fd)
    output = (readers[0], readers[1]) if readers else None
    return Spawned(process, parent_sock, acquired - requested, time.monotonic(), output)
