"""The driver's handle on a child that runs on a Ray node: :class:`RayProcess`.

Everything goes through the supervision connection to the child's host actor (see
:mod:`._ray_wire`), read with plain async socket I/O: no thread waits on Ray for it, and
it works under trio and asyncio alike.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from _launch_child._protocol import ProtocolError, encode, take_frame

from .._fds import own_socket
from .._start.process import ProcessHandle
from ._ray_wire import HOST_MESSAGES, LOST_AFTER_S, MAX_SUPERVISION_FRAME, well_formed


@dataclass(frozen=True)
class RayNode:
    """The Ray node a child runs on.

    Attributes:
        node_id (str): Ray's node id (hex).
        ip (str): The node's IP address, as Ray knows it.
    """

    node_id: str
    ip: str

    def __str__(self) -> str:
        return f"node {self.ip} ({self.node_id[:12]})"


def estimate_offset(samples: Iterable[tuple[float, float, float]]) -> tuple[float, float]:
    """The offset of a remote clock from the local one, from clock exchanges.

    Each sample is ``(t0, remote, t1)``: the local time a request was sent, the remote
    clock's reading in its answer, the local time the answer arrived. The remote reading
    is taken to be from the middle of the round trip, so ``offset = remote - (t0 + rtt /
    2)``; the sample with the shortest round trip (the least room for error) is used.

    Args:
        samples: One or more ``(t0, remote, t1)`` triples, ``t0 <= t1``.

    Returns:
        ``(offset, rtt)``: a remote time ``r`` is ``r - offset`` on the local clock;
        ``rtt`` is the round trip of the sample used (the offset's error is at most
        half of it).

    Raises:
        ValueError: ``samples`` is empty, or a sample has ``t1 < t0``.
    """
    best: tuple[float, float] | None = None
    for t0, remote, t1 in samples:
        if t1 < t0:
            raise ValueError(f"a clock sample ends before it starts: {(t0, remote, t1)}")
        rtt = t1 - t0
        if best is None or rtt < best[1]:
            best = (remote - (t0 + rtt / 2), rtt)
    if best is None:
        raise ValueError("no clock samples")
    return best


class SupervisionLost(Exception):
    """The supervision connection broke, went silent, or carried garbage."""


class Supervision:
    """The driver's end of one supervision connection (non-blocking socket)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = own_socket(sock)
        self.buf = bytearray()
        self.closed = False

    async def receive(self, silence_s: float = LOST_AFTER_S) -> tuple[Any, ...]:
        """The next message. Raises :class:`SupervisionLost` on EOF, a reset, garbage, or
        nothing at all for ``silence_s`` seconds (heartbeats come much more often)."""
        while True:
            try:
                frame = take_frame(self.buf, MAX_SUPERVISION_FRAME)
            except ProtocolError as exc:
                raise SupervisionLost(f"not launch's protocol: {exc}") from None
            if frame is not None:
                if not well_formed(frame, HOST_MESSAGES):
                    raise SupervisionLost(f"an unexpected message {str(frame)[:60]!r}")
                assert isinstance(frame, tuple)
                return frame
            if self.closed:
                raise SupervisionLost("closed")
            try:
                data = self.sock.recv(1 << 12)
            except BlockingIOError:
                with anyio.move_on_after(silence_s):
                    try:
                        await anyio.wait_readable(self.sock)
                    except anyio.ClosedResourceError:
                        raise SupervisionLost("closed") from None
                    continue
                # Silent that long, unless this task itself was kept from running (a
                # blocked event loop): one more look before declaring the peer lost.
                if not _readable_now(self.sock):
                    raise SupervisionLost(f"no heartbeat for {silence_s:g}s") from None
                continue
            except OSError as exc:
                raise SupervisionLost(f"connection error: {exc}") from None
            if not data:
                raise SupervisionLost("connection closed")
            self.buf += data

    def send_nowait(self, *message: Any) -> bool:
        """Send a short message now; False if it could not be (connection gone or full)."""
        if self.closed:
            return False
        data = encode(message)
        try:
            return self.sock.send(data) == len(data)
        except OSError:
            return False

    async def send(self, *message: Any) -> None:
        """Send a message. Raises :class:`SupervisionLost` if the connection is gone."""
        data = memoryview(encode(message))
        while data:
            try:
                data = data[self.sock.send(data) :]
            except BlockingIOError:
                with anyio.fail_after(LOST_AFTER_S):
                    await anyio.wait_writable(self.sock)
            except OSError as exc:
                raise SupervisionLost(f"connection error: {exc}") from None

    def close(self) -> None:
        """Close the connection (the host actor then kills the child if it still runs)."""
        if not self.closed:
            self.closed = True
            anyio.notify_closing(self.sock)
            self.sock.close()


def _readable_now(sock: socket.socket) -> bool:
    import select

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class RayProcess(ProcessHandle):
    """A launch child running on a Ray node, seen from the driver.

    Its exit, and signals to it, travel over the supervision connection to its host
    actor, which acts on the node with launch's own process handle. If that connection
    breaks or goes silent for :data:`LOST_AFTER_S` seconds (the node or the actor died,
    the network failed), the child counts as exited with an unknown exit code, and
    :attr:`exit_unknown` says why and where.

    Attributes:
        pid (int): The child's process id on its node.
        node (RayNode): Where it runs.
        clock_offset (float): The node's ``time.monotonic()`` minus the driver's,
            measured when the child was started; a time ``t`` the child reports is
            ``t - clock_offset`` on the driver's clock.
        clock_error (float): The bound on ``clock_offset``'s error (half the round trip
            it was measured over), in seconds.
        returncode (int | None): The exit code once known (negative: killed by that
            signal); None while running or if it was lost with its node.
        exit_unknown (str | None): Why the exit code is unknown, naming the node; None
            unless contact was lost.
    """

    def __init__(
        self,
        pid: int,
        node: RayNode,
        supervision: Supervision,
        clock_offset: float = 0.0,
        clock_error: float = 0.0,
    ) -> None:
        self.pid = pid
        self.node = node
        self.clock_offset = clock_offset
        self.clock_error = clock_error
        self.returncode: int | None = None
        self.exit_unknown: str | None = None
        self._supervision = supervision
        self._exited = False
        self._waiting: anyio.Event | None = None

    def to_local(self, remote_time: float) -> float:
        """A ``time.monotonic()`` reading of the child's node, on the driver's clock."""
        return remote_time - self.clock_offset

    async def wait_exited(self) -> None:
        """Return once the child has exited or contact with its node is lost."""
        if self._exited:
            return
        if self._waiting is not None:  # another task reads the connection: wait for it
            await self._waiting.wait()
            return
        self._waiting = anyio.Event()
        try:
            while True:
                try:
                    message = await self._supervision.receive()
                except SupervisionLost as exc:
                    self._lost(str(exc))
                    return
                if message[0] == "exit":
                    self.returncode = message[1]
                    self._exited = True
                    return
        finally:
            self._waiting.set()
            self._waiting = None

    def _lost(self, why: str) -> None:
        self._exited = True
        self.exit_unknown = (
            f"exit status unknown: lost contact with its host actor on {self.node} ({why}); "
            "the node or the actor died, or the network failed"
        )

    def reap(self) -> int | None:
        """The exit code (negative: signal); None if contact with the node was lost."""
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Ask the host actor to send ``sig`` to the child (best effort, no wait)."""
        if not self._exited:
            self._supervision.send_nowait("signal", int(sig))

    def kill_group(self) -> None:
        """Ask the host actor to SIGKILL the child's subtree and process group on its
        node (best effort, no wait; if the connection is gone, the actor does so by
        itself)."""
        if not self._exited:
            self._supervision.send_nowait("kill_group")

    def close(self) -> None:
        """Close the supervision connection; a child still running is then killed by its
        host actor."""
        self._supervision.close()

    def __repr__(self) -> str:
        return f"<RayProcess pid={self.pid} on {self.node} returncode={self.returncode}>"


__all__ = ["RayNode", "RayProcess", "estimate_offset"]
