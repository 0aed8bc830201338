"""Child bootstrap, in the order DESIGN.md gives.

1. own process group, SIGINT ignored, SIGTERM raises SystemExit, faulthandler on; then
   the child's guard process (see ``_guard``), and the child becomes the subreaper of
   its descendants, so that those that daemonize (double fork, ``setsid``) stay in
   reach;
2. death watch: EOF on the control socket, or the launch parent's exit (its pidfd), gives
   the child's process group SIGTERM, then the child exits;
3. apply ``env``;
4. import the target, call it with ``kwargs``;
5. an exception is reported to the parent as text, then the child exits non-zero.

Before the child exits (in order, by an exception or by SIGTERM), what is left of its
subtree is SIGKILLed and reaped, and its guard is stopped: see :func:`_finish`.

Entry points: :func:`spawn_main` (a fresh interpreter) and :func:`fork_main` (a fork of
the parent or of launch's forkserver).
"""

from __future__ import annotations

import atexit
import contextlib
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
from collections.abc import Iterator
from typing import Any, NoReturn

from . import _api, _guard, _tree
from ._protocol import (
    Boot,
    Booted,
    ErrorReport,
    Failed,
    Stop,
    recv_frame_blocking,
    split_frames,
)

EXIT_ERROR = 1
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_PARENT_GONE = 128 + signal.SIGHUP
_GRACE_AFTER_TERM_S = 0.5
_FALLBACK_POLL_MS = 200  # without a pidfd of the launch parent: how often to look at it
_SUBTREE_WAIT_S = 1.0  # at exit: how long the SIGKILLed subtree may take to be gone

_guard_starting: _guard.Starting | None = None
_guard_handle: _guard.Guard | None = None
_bootstrap_pid = -1  # the process that runs the bootstrap (not a fork of its target's)
_finish_lock = threading.Lock()


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
    try:
        faulthandler.enable()
    except Exception:  # sys.stderr has no fileno (a StringIO, a test runner's capture)
        try:
            faulthandler.enable(file=2)
        except Exception:
            pass


def _start_guard(launcher: _tree.Proc) -> None:
    """Fork the guard's middle process (finished by :func:`_settle_guard`)."""
    global _guard_starting
    with _sigterm_blocked():  # no half-made guard
        _guard_starting = _guard.start(launcher)


def _settle_guard() -> None:
    """Finish starting the guard, then become a subreaper (only now: the guard, orphaned
    when the middle process exits, must not become this process's child)."""
    global _guard_starting, _guard_handle
    with _sigterm_blocked():
        starting, _guard_starting = _guard_starting, None
        if starting is not None:
            _guard_handle = starting.wait()
    if _guard_handle is None:
        print(
            "launch: could not start this child's guard process; a parent death is "
            "watched by a thread only",
            file=sys.stderr,
        )
    _tree.set_child_subreaper()


@contextlib.contextmanager
def _sigterm_blocked() -> Iterator[None]:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _finish() -> None:
    """SIGKILL and reap what is left of this child's subtree, then stop its guard.

    Runs as the child exits: from ``atexit`` (spawn, after the target's own exit
    handlers), before ``os._exit`` (fork, forkserver), or from the death watch.
    """
    global _guard_handle
    if os.getpid() != _bootstrap_pid:  # a fork of the target unwinding through here
        return
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut it short
    except ValueError:  # not the main thread
        pass
    with _finish_lock:  # the main thread and the death watch may both get here
        if _guard_starting is not None:  # SIGTERM came before the boot frame
            _settle_guard()
        _tree.kill_descendants(os.getpid(), lambda: True, wait=_SUBTREE_WAIT_S)
        _tree.reap_children()
        guard, _guard_handle = _guard_handle, None
        if guard is not None:
            guard.stop()


def _finish_surely() -> None:
    for _ in range(3):
        try:
            _finish()
            return
        except SystemExit:  # a SIGTERM that landed before the handler was dropped
            continue


def _parent_gone() -> NoReturn:
    """The parent is gone (or closed the control socket): take the child's group down.

    SIGTERM to the group makes the child's main thread exit through :func:`_finish`; if
    it has not within the grace, this thread does the same and exits.
    """
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
        time.sleep(_GRACE_AFTER_TERM_S)
        _finish()
    finally:
        os._exit(EXIT_PARENT_GONE)


def _watch(channel: _api._Channel, buf: bytearray, launcher: _tree.Proc) -> None:
    """Death watch and stop requests, on a daemon thread of the child.

    ``poll``, not ``select``: the socket's fd number may be above 1023. The launch
    parent's pidfd is watched too: EOF alone is not enough when another process holds a
    copy of the parent's end of the socket (a fork of the parent that launch did not
    make). The guard process does the same from outside, for when this thread cannot run.
    """
    sock = channel.sock
    poller = select.poll()
    watched: set[int] = set()
    for fd in (sock.fileno(), launcher.pidfd):
        if fd is not None:
            poller.register(fd, select.POLLIN)
            watched.add(fd)
    timeout = -1 if launcher.pidfd is not None else _FALLBACK_POLL_MS
    while watched:
        events = dict(poller.poll(timeout))
        _forget_closed(poller, watched, events)
        if _launcher_exited(launcher, events):
            _parent_gone()
        readable = sock.fileno() in events and sock.fileno() in watched
        if readable and not _read_control(channel, buf):  # not launch's protocol: stop
            poller.unregister(sock)
            watched.discard(sock.fileno())


def _forget_closed(poller: select.poll, watched: set[int], events: dict[int, int]) -> None:
    """Stop watching the fds that were closed under the watch (by the target)."""
    for fd, event in events.items():
        if event & select.POLLNVAL:
            poller.unregister(fd)
            watched.discard(fd)


def _launcher_exited(launcher: _tree.Proc, events: dict[int, int]) -> bool:
    if launcher.pidfd is None:  # no pidfd: looked at every _FALLBACK_POLL_MS
        return launcher.exited()
    return bool(events.get(launcher.pidfd, 0) & select.POLLIN)


def _read_control(channel: _api._Channel, buf: bytearray) -> bool:
    """Read what the parent sent and act on its stop request; EOF means the parent is
    gone. False if the stream is not launch's protocol."""
    try:
        data = channel.sock.recv(1 << 16)
    except OSError:
        data = b""
    if not data:
        _parent_gone()
    buf += data
    try:
        frames = split_frames(buf)
    except Exception:
        return False
    if any(isinstance(frame, Stop) for frame in frames):
        channel.stop_event.set()
    return True


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
        channel.send(Failed(report))
    except OSError:
        pass


def run(sock: socket.socket, launcher: _tree.Proc | None) -> int:
    """Run one child to completion and return its exit code (``launcher``: the launch
    parent, pinned; None if it is already gone)."""
    global _bootstrap_pid
    _bootstrap_pid = os.getpid()
    _prepare_process()
    if launcher is None:
        return EXIT_PARENT_GONE
    # Only this process uses it: not the guard, nor what the target execs.
    sock.set_inheritable(False)
    _start_guard(launcher)
    buf = bytearray()
    boot = _receive_boot(sock, buf)
    _settle_guard()
    if boot is None:
        return EXIT_PARENT_GONE
    channel = _api._Channel(sock, boot.name)
    _api._install(channel)
    channel.send(Booted(time.monotonic()))
    threading.Thread(
        target=_watch, args=(channel, buf, launcher), name="launch-death-watch", daemon=True
    ).start()
    return _run_target(channel, boot)


def _receive_boot(sock: socket.socket, buf: bytearray) -> Boot | None:
    """The boot message; None if the parent is gone (or sent something else)."""
    sock.setblocking(True)
    frame = recv_frame_blocking(sock, buf)
    return frame if isinstance(frame, Boot) else None


def _run_target(channel: _api._Channel, boot: Boot) -> int:
    """Set the child up as ``boot`` says, call its target; the exit code (an exception
    is reported to the parent first)."""
    try:
        _apply_boot(boot)
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


def _apply_boot(boot: Boot) -> None:
    """Apply ``env``, ``sys.path``, the working directory and (a ``__main__`` target)
    multiprocessing's preparation of ``__main__``."""
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


def spawn_main(fd: int, parent_pid: int) -> NoReturn:
    """Entry of a child started as a fresh interpreter (start method ``spawn``)."""
    launcher = _tree.Proc.parent(parent_pid)
    sock = socket.socket(fileno=fd)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    atexit.register(_finish_surely)  # first registered, so it runs after the target's own
    code = run(sock, launcher)
    sys.exit(code)


def fork_main(fd: int, parent_pid: int, parent_pidfd: int | None = None) -> NoReturn:
    """Entry of a forked child (start methods ``fork`` and ``forkserver``): never returns.

    ``parent_pid`` is the launch parent: this process's parent (``fork``), or the
    forkserver's, whose pidfd the forkserver passes as ``parent_pidfd``.
    """
    code = EXIT_ERROR
    try:
        if parent_pidfd is None:
            launcher = _tree.Proc.parent(parent_pid)
        else:
            launcher = _tree.Proc.pin(parent_pid, parent_pidfd)
        sock = socket.socket(fileno=fd)
        try:
            sys.stdin = open(os.devnull)  # noqa: SIM115
        except OSError:
            pass
        code = run(sock, launcher)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except BaseException:
        traceback.print_exc()
    finally:
        _finish_surely()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
