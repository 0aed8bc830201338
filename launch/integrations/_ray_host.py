"""The actor side of the Ray placement: one :class:`ChildHost` actor per child.

It runs in a Ray worker process on the child's node, inside the child's placement-group
bundle (so Ray has set the bundle's device visibility in its environment). It connects
back to the driver twice (see :mod:`._ray_wire`), then starts launch's child bootstrap as
its own child process, a fresh interpreter exactly as the local ``spawn`` start method
does, with the control connection as the child's control socket. From then on:

- the child's exit (seen through a pidfd) is reported to the driver with its exit code;
- the driver's signal and kill requests are carried out on this node, with launch's own
  handle (:class:`launch._start.process.DirectProcess`): ``kill_group`` walks the child's
  subtree, pins each process, SIGKILLs it, then SIGKILLs the child's process group;
- a heartbeat goes to the driver every :data:`._ray_wire.HEARTBEAT_S`;
- the driver gone (EOF, a reset, a send that cannot complete, TCP keepalive failing) is
  acted on at once: the child's subtree and group are SIGKILLed and reaped.

The child's own defences hold as locally: it watches this actor (its launcher) through a
pidfd and runs a guard process, so if Ray kills the actor (the driver's job ended, the
placement is torn down) the child's tree goes within the guard's grace.
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import socket
import subprocess
import time
from typing import Any

from _launch_child._protocol import ProtocolError, encode, take_frame

from .._start.interpreter import child_interpreter_argv
from .._start.process import DirectProcess
from ._ray_wire import (
    DRIVER_MESSAGES,
    HEARTBEAT_S,
    LOST_AFTER_S,
    MAX_SUPERVISION_FRAME,
    ROLE_CONTROL,
    ROLE_SUPERVISION,
    hello,
    keepalive,
    well_formed,
)

_CONNECT_TIMEOUT_S = 30.0
_SETUP_TIMEOUT_S = 60.0  # from the connection to the driver's "start"


class DriverGone(Exception):
    """The supervision connection broke, or the driver sent something it never sends."""


class _Supervision:
    """The actor's end of the supervision connection (blocking, with a send bound)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def send(self, *message: Any) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError as exc:  # socket.timeout included: the driver stopped reading
            raise DriverGone(f"sending {message[0]!r}: {exc}") from None

    def receive_some(self) -> list[tuple[Any, ...]]:
        """What one ``recv`` brings (call when readable). Raises :class:`DriverGone`."""
        try:
            data = self.sock.recv(1 << 12)
        except OSError as exc:
            raise DriverGone(str(exc)) from None
        if not data:
            raise DriverGone("the driver closed the connection")
        self.buf += data
        frames = []
        try:
            while (frame := take_frame(self.buf, MAX_SUPERVISION_FRAME)) is not None:
                if not well_formed(frame, DRIVER_MESSAGES):
                    raise DriverGone(f"unexpected message {str(frame)[:60]!r}")
                assert isinstance(frame, tuple)
                frames.append(frame)
        except ProtocolError as exc:
            raise DriverGone(str(exc)) from None
        return frames

    def receive(self, timeout: float) -> tuple[Any, ...]:
        """The next frame, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pending: list[tuple[Any, ...]] = []
        while not pending:
            left = deadline - time.monotonic()
            if left <= 0 or not _readable(self.sock, left):
                raise DriverGone(f"no word from the driver in {timeout:.0f}s")
            pending = self.receive_some()
        if len(pending) > 1:  # never happens in setup (one request, one answer)
            raise DriverGone("the driver sent several requests at once during setup")
        return pending[0]


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def _connect(address: tuple[str, int], role: bytes, token: bytes) -> socket.socket:
    sock = socket.create_connection(address, timeout=_CONNECT_TIMEOUT_S)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keepalive(sock)
        sock.sendall(hello(role, token))
    except BaseException:
        sock.close()
        raise
    return sock


def _node() -> tuple[str, str]:
    ray: Any = importlib.import_module("ray")  # untyped for mypy, with or without ray
    return str(ray.get_runtime_context().get_node_id()), str(ray.util.get_node_ip_address())


def _own_environment() -> dict[str, str]:
    """This actor's environment, less what launch set for the actor alone (Ray's child
    killing switched off: a Ray driver started by the child keeps Ray's default)."""
    env = dict(os.environ)
    env.pop("RAY_kill_child_processes_on_worker_exit", None)
    return env


def _start_child(control: socket.socket, overlay: dict[str, str]) -> DirectProcess:
    """Launch's child bootstrap, as a fresh interpreter whose launcher is this actor,
    with this actor's environment (Ray's device visibility for the bundle) plus the
    launch parent's env ``overlay``."""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in overlay.items()):
        raise TypeError("the env overlay must map str to str")
    fd = control.fileno()
    args = child_interpreter_argv("_bootstrap", f"spawn_main({fd}, {os.getpid()})")
    popen = subprocess.Popen(
        args,
        pass_fds=(fd,),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        env={**_own_environment(), **overlay},
    )
    return DirectProcess(popen.pid, popen)


class ChildHost:
    """A Ray actor (made with ``ray.remote`` by the driver) hosting one launch child."""

    def run(self, address: tuple[str, int], token: bytes) -> int | None:
        """Connect to the driver at ``address``, start the child when told, supervise it
        until it exits or the driver is gone. Returns the child's exit code (None if it
        was never started)."""
        supervision = _Supervision(_connect(address, ROLE_SUPERVISION, token))
        try:
            control = _connect(address, ROLE_CONTROL, token)
        except BaseException:
            supervision.sock.close()
            raise
        process: DirectProcess | None = None
        try:
            supervision.sock.settimeout(LOST_AFTER_S)  # bounds every send
            node_id, ip = _node()
            supervision.send("node", node_id, ip, os.getpid())
            while True:
                request = supervision.receive(_SETUP_TIMEOUT_S)
                if request[0] == "clock":
                    supervision.send("clock", time.monotonic())
                elif request[0] == "start":
                    break
            try:
                process = _start_child(control, request[1])
            except Exception as exc:
                supervision.send("failed", f"{type(exc).__name__}: {exc}")
                return None
            finally:
                control.close()  # the child holds it now: its exit is the driver's EOF
            supervision.send("started", process.pid)
            code = _supervise(supervision, process)
            process = None
            return code
        except DriverGone:
            return None
        finally:
            control.close()
            if process is not None:  # the driver is gone, or this actor is failing
                process.kill_group()
                process.reap()
                process.close()
            supervision.sock.close()


def _supervise(supervision: _Supervision, process: DirectProcess) -> int | None:
    """Relay the driver's requests and heartbeats until the child exits (its code is
    sent to the driver) or the driver is gone (the child's tree is killed)."""
    pidfd = os.pidfd_open(process.pid)
    try:
        poller = select.poll()
        poller.register(supervision.sock, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_beat:
                supervision.send("hb")
                next_beat = now + HEARTBEAT_S
            events = dict(poller.poll(max(0, int((next_beat - now) * 1000))))
            if pidfd in events:
                code = process.reap()
                process.close()
                try:
                    supervision.send("exit", code)
                except DriverGone:
                    pass
                return code
            if supervision.sock.fileno() in events:
                # DriverGone propagates: the caller kills the child's tree at once.
                for request in supervision.receive_some():
                    if request[0] == "signal" and request[1] in signal.valid_signals():
                        process.send_signal(request[1])
                    elif request[0] == "kill_group":
                        process.kill_group()
    finally:
        os.close(pidfd)
