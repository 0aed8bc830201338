"""Child bootstrap, in the order DESIGN.md gives.

1. own process group, SIGINT ignored, SIGTERM raises SystemExit, faulthandler on;
2. death watch on the control socket (EOF means the parent is gone);
3. apply ``env``;
4. import the target, call it with ``kwargs``;
5. an exception is reported to the parent as text, then the child exits non-zero.

Entry points: :func:`spawn_main` (a fresh interpreter) and :func:`fork_main` (a fork of
the parent or of launch's forkserver).
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

from . import _api
from ._protocol import Boot, ErrorReport, recv_frame_blocking, split_frames

EXIT_ERROR = 1
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_PARENT_GONE = 128 + signal.SIGHUP
_PPID_POLL_S = 0.2
_GRACE_AFTER_TERM_S = 0.5


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_SIGTERM)


def _prepare_process() -> None:
    if os.getsid(0) != os.getpid():
        os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    for sig in (signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)  # a forked child must not write into the parent's event loop
    except ValueError:
        pass
    faulthandler.enable()


def _parent_gone() -> NoReturn:
    """The parent died: take the whole process group down, grandchildren included."""
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
        time.sleep(_GRACE_AFTER_TERM_S)
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(EXIT_PARENT_GONE)


def _watch(channel: _api._Channel, buf: bytearray, parent_pid: int) -> None:
    """Death watch and stop requests, on a daemon thread of the child.

    EOF on the control socket means the parent is gone. The parent-pid check is the
    second line: a forked sibling may hold a copy of the parent's end of our socket.
    """
    sock = channel.sock
    while True:
        readable, _, _ = select.select([sock], [], [], _PPID_POLL_S)
        if os.getppid() != parent_pid:
            _parent_gone()
        if not readable:
            continue
        try:
            data = sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            _parent_gone()
        buf += data
        for frame in split_frames(buf):
            if frame[0] == "stop":
                channel.stop_event.set()


def _load_target(boot: Boot) -> Any:
    if boot.target is not None:
        module_name, _, qualname = boot.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    assert boot.target_pickle is not None
    return pickle.loads(boot.target_pickle)


def _report(channel: _api._Channel, exc: BaseException) -> None:
    report = ErrorReport(
        type_name=type(exc).__qualname__,
        message=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        phase=channel.phase,
        ready=channel.ready_sent,
        at=time.monotonic(),
    )
    try:
        channel.send(("error", report))
    except OSError:
        pass


def run(sock: socket.socket, parent_pid: int) -> int:
    """Run one child to completion and return its exit code."""
    _prepare_process()
    sock.setblocking(True)
    buf = bytearray()
    frame = recv_frame_blocking(sock, buf)
    if frame is None or frame[0] != "boot":
        return EXIT_PARENT_GONE
    boot: Boot = frame[1]
    channel = _api._Channel(sock, boot.name)
    _api._install(channel)
    channel.send(("booted", time.monotonic()))
    threading.Thread(
        target=_watch, args=(channel, buf, parent_pid), name="launch-death-watch", daemon=True
    ).start()

    try:
        os.environ.update(boot.env)
        # Output reaches the parent (or a pipe it reads) a line at a time, as it happens.
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except (OSError, ValueError):
                pass
        sys.path[:] = boot.sys_path
        if os.getcwd() != boot.cwd:
            os.chdir(boot.cwd)
        if boot.main_prep is not None:
            from multiprocessing import spawn as mp_spawn

            mp_spawn.prepare(boot.main_prep)
        target = _load_target(boot)
        kwargs = pickle.loads(boot.kwargs_pickle)
        target(**kwargs)
    except SystemExit as exc:
        if exc.code == EXIT_SIGTERM or exc.code in (0, None):
            return 0 if exc.code is None else int(exc.code)
        _report(channel, exc)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except BaseException as exc:
        _report(channel, exc)
        return EXIT_ERROR
    return 0


def spawn_main(fd: int, parent_pid: int) -> NoReturn:
    """Entry of a child started as a fresh interpreter (start method ``spawn``)."""
    sock = socket.socket(fileno=fd)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    code = run(sock, parent_pid)
    sys.exit(code)


def fork_main(fd: int, parent_pid: int) -> NoReturn:
    """Entry of a forked child (start methods ``fork`` and ``forkserver``): never returns."""
    code = EXIT_ERROR
    try:
        sock = socket.socket(fileno=fd)
        try:
            sys.stdin = open(os.devnull)  # noqa: SIM115
        except OSError:
            pass
        code = run(sock, parent_pid)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
