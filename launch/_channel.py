"""The parent's end of a child's control socket, read and written without threads."""

from __future__ import annotations

import socket
from collections import deque

import anyio

from _launch_child._protocol import (
    MAX_CHILD_FRAME,
    ChildMessage,
    ParentMessage,
    ProtocolError,
    check_child_message,
    encode,
    take_frame,
)

from ._fds import own_socket

__all__ = ["ControlChannel", "ProtocolError"]

_RECV_SIZE = 1 << 16


class ControlChannel:
    """Framed messages over a non-blocking socket; EOF when the child is gone.

    What the child sends is checked as it arrives: a frame longer than
    ``MAX_CHILD_FRAME`` is refused from its header alone, so the buffer never holds more
    than one frame plus one read; anything that is not a valid message makes
    :meth:`receive` raise :class:`ProtocolError` (after the valid messages before it).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = own_socket(sock)
        self._buf = bytearray()
        self._pending: deque[ChildMessage] = deque()
        self._broken: ProtocolError | None = None
        self.closed = False

    async def receive(self) -> ChildMessage | None:
        """The next message, checked (``check_child_message``), or ``None`` at EOF.
        Raises :class:`ProtocolError` once the stream held something that is not a valid
        message; nothing after it is read."""
        while not self._pending:
            if self._broken is not None:
                raise self._broken
            try:
                data = self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(self._sock)
                except anyio.ClosedResourceError:
                    return None
                continue
            except OSError:
                return None
            if not data:
                return None
            self._buf += data
            try:
                while (frame := take_frame(self._buf, MAX_CHILD_FRAME)) is not None:
                    self._pending.append(check_child_message(frame))
            except ProtocolError as exc:
                self._broken = exc
                self._buf = bytearray()
        return self._pending.popleft()

    async def send_frame(self, frame: bytes) -> bool:
        """Send one encoded frame; False if the child is already gone."""
        data = memoryview(frame)
        while data:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                try:
                    await anyio.wait_writable(self._sock)
                except anyio.ClosedResourceError:
                    return False
                continue
            except OSError:
                return False
            data = data[sent:]
        return True

    def send_nowait(self, message: ParentMessage) -> bool:
        """Best effort for short messages (:class:`Stop`): False if it could not be sent now."""
        try:
            data = encode(message)
            return self._sock.send(data) == len(data)
        except OSError:
            return False

    def close(self) -> None:
        """Close the socket (the child sees EOF); idempotent."""
        if not self.closed:
            self.closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
