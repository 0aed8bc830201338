"""The parent's end of a child's control socket, read and written without threads."""

from __future__ import annotations

import socket
from collections import deque
from typing import Any

import anyio

from _launch_child._protocol import encode, split_frames


class ControlChannel:
    """Framed messages over a non-blocking socket; EOF when the child is gone."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._buf = bytearray()
        self._pending: deque[tuple[Any, ...]] = deque()
        self.closed = False

    async def receive(self) -> tuple[Any, ...] | None:
        """The next message, or ``None`` at EOF."""
        while not self._pending:
            try:
                data = self._sock.recv(1 << 16)
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
            self._pending.extend(split_frames(self._buf))
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

    def send_nowait(self, message: tuple[Any, ...]) -> bool:
        """Best effort for short messages (stop): False if it could not be sent now."""
        try:
            data = encode(message)
            return self._sock.send(data) == len(data)
        except OSError:
            return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
