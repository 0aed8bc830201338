"""Child output with ``output="prefix"``: read by tasks of the group's tree, printed
line by line as ``[group/child] line``, and the last lines kept for the child's error.

Nothing is lost: a partial last line is printed at EOF, and after the child is reaped
whatever is still in the pipes is read without waiting before they are closed.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import TextIO

import anyio

TAIL_LINES = 20
_CHUNK = 65536


class OutputPump:
    """The stdout and stderr pipes of one child."""

    def __init__(self, fds: tuple[int, int], prefix: str, tail_lines: int = TAIL_LINES) -> None:
        self.prefix = prefix
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.done = anyio.Event()  # both pipes at EOF
        self._open = list(fds)
        self._partial = {fd: b"" for fd in fds}
        self._stream_of = {fds[0]: "stdout", fds[1]: "stderr"}
        for fd in fds:
            os.set_blocking(fd, False)

    async def run(self) -> None:
        """Read both pipes until EOF (a task of the child's watcher)."""
        async with anyio.create_task_group() as tg:
            for fd in list(self._open):
                tg.start_soon(self._pump, fd)
        self.done.set()

    async def _pump(self, fd: int) -> None:
        while fd in self._open:
            await anyio.wait_readable(fd)
            self._read_available(fd)

    def _read_available(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._emit(fd, self._partial[fd], final=True)
                self._close(fd)
                return
            self._emit(fd, self._partial[fd] + data, final=False)

    def _emit(self, fd: int, data: bytes, *, final: bool) -> None:
        *lines, rest = data.split(b"\n")
        if final and rest:
            lines.append(rest)
            rest = b""
        self._partial[fd] = rest
        if not lines:
            return
        stream: TextIO = sys.stdout if self._stream_of[fd] == "stdout" else sys.stderr
        text = []
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            self.tail.append(line)
            text.append(f"[{self.prefix}] {line}\n")
        try:
            stream.write("".join(text))
            stream.flush()
        except (OSError, ValueError):
            pass  # the parent's own stream is gone; the tail still has the lines

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.remove(fd)
            os.close(fd)

    def finish(self) -> None:
        """After the child is reaped: read what is left without waiting, then close."""
        for fd in list(self._open):
            self._read_available(fd)
            if fd in self._open:  # a grandchild still holds the pipe: print what we have
                self._emit(fd, self._partial[fd], final=True)
                self._close(fd)
        self.done.set()
