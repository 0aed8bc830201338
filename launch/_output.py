"""Child output with ``output="prefix"``: read by tasks of the group's tree, printed
line by line as ``[group/child] line``, and the last lines kept for the child's error.

Bounded, and never blocking the event loop, whatever the child or the parent's own
stdout do:

- A line longer than :data:`MAX_LINE` bytes is split into pieces of at most that size,
  each but the last ending with :data:`SPLIT_MARK`; a child writing megabytes without a
  newline costs linear time and at most :data:`MAX_LINE` buffered bytes per pipe.
- Printing goes through a bounded buffer per stream (:data:`WRITE_BUFFER` bytes) that a
  writer task drains into the stream's fd only while the fd is writable (``poll`` with
  no timeout, then at most ``PIPE_BUF`` bytes: a pipe that polls writable takes that
  much without blocking, even in blocking mode). When the buffer is full the line is
  dropped and counted (:attr:`OutputPump.dropped_lines`); once there is room again a
  notice saying how many were dropped is printed in their place. The parent's fds are
  never switched to non-blocking mode: they are shared with the terminal and other
  processes. A stream without a usable ``fileno()`` (pytest's ``capsys``, a
  ``StringIO``) cannot block and is written directly.
- The child's pipes are always read, so a stalled parent stdout never stalls the child.

Lines reach the parent's stream in order per stream; the parent's own writes to
``sys.stdout`` that still sit in its Python-level buffer may come out after them. After
the child is reaped, whatever is still in its pipes is read without waiting, and what
cannot be written at once is dropped and counted: nothing waits for a stalled stream.
"""

from __future__ import annotations

import os
import select
import sys
from collections import deque
from typing import TextIO

import anyio
import anyio.lowlevel

from ._fds import close_fd, own_fd

TAIL_LINES = 20
TAIL_LINE_MAX = 4096
"""Characters of one line kept in the tail (the tail goes into error messages)."""
MAX_LINE = 64 * 1024
"""Longest line, in bytes, printed as one; a longer one is split into pieces."""
SPLIT_MARK = " [launch: line continues]"
"""Ends every piece of a split line but the last."""
WRITE_BUFFER = 256 * 1024
"""Bytes per child and stream waiting to be written before lines are dropped."""
_CHUNK = 65536
_READS_PER_WAKEUP = 16  # then yield: a child that writes without pause cannot hog the loop
_WRITE_CHUNK = select.PIPE_BUF
_POLL_MIN_S = 0.005  # while the stream is not writable: first retry, doubling up to...
_POLL_MAX_S = 0.1


def _utf8_cut(data: bytes | bytearray, limit: int) -> int:
    """Where to split ``data`` (longer than ``limit``) at most ``limit`` bytes in, not
    inside a UTF-8 sequence (a character is at most four bytes)."""
    for back in range(4):
        if data[limit - back] & 0xC0 != 0x80:  # not a continuation byte (10xxxxxx)
            return limit - back
    return limit  # not UTF-8 anyway


def _fileno(stream: TextIO | None) -> int | None:
    if stream is None:
        return None
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _writable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    # POLLERR / POLLHUP / POLLNVAL count as writable: the write then fails at once.
    return bool(poller.poll(0))


class _Writer:
    """One stream (the parent's stdout or stderr) of one child, and its bounded buffer."""

    def __init__(self, pump: OutputPump, name: str) -> None:
        self._pump = pump
        self._name = name
        # (bytes, lines of the child they hold: 1, or 0 for a notice), oldest first
        self._queue: deque[tuple[bytes, int]] = deque()
        self._offset = 0  # bytes of _queue[0] already written
        self._queued = 0  # bytes in _queue not yet written
        self._unreported = 0  # lines dropped since the last notice
        self._closing = False  # no more lines are coming
        self._wakeup: anyio.Event | None = None

    @property
    def stream(self) -> TextIO | None:
        # Looked up each time: a test runner swaps sys.stdout between phases.
        return sys.stdout if self._name == "stdout" else sys.stderr

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def put(self, lines: list[bytes]) -> None:
        """Queue prefixed lines (each ending in a newline) and write what the stream takes
        now; drop the lines that do not fit in the buffer."""
        if not self._queue and _fileno(self.stream) is None:
            self._write_text(lines)
            return
        stalled = False
        for line in lines:
            if not stalled and self._queued + len(line) > WRITE_BUFFER:
                stalled = not self.write_ready()  # make room if the stream takes some now
            self._notice()
            if self._unreported or self._queued + len(line) > WRITE_BUFFER:
                self._drop(1)
            else:
                self._queue.append((line, 1))
                self._queued += len(line)
        if (stalled or not self.write_ready()) and self._wakeup is not None:
            self._wakeup.set()  # the writer task retries once the stream is writable

    def _drop(self, lines: int) -> None:
        self._unreported += lines
        self._pump.dropped_lines += lines

    def _notice(self) -> None:
        """Queue the note about dropped lines, if any and if it fits."""
        if not self._unreported:
            return
        notice = (
            f"[{self._pump.prefix}] [launch: {self._unreported} lines dropped: "
            f"{self._name} was not writable]\n"
        ).encode()
        if self._queued + len(notice) <= WRITE_BUFFER:
            self._queue.append((notice, 0))
            self._queued += len(notice)
            self._unreported = 0

    def _write_text(self, lines: list[bytes], count: int | None = None) -> None:
        stream = self.stream
        try:
            if stream is None:
                raise ValueError("no stream")
            stream.write(b"".join(lines).decode(errors="replace"))
            stream.flush()
        except (OSError, ValueError):  # the parent's own stream is gone; the tail has them
            self._pump.dropped_lines += len(lines) if count is None else count

    def write_ready(self) -> bool:
        """Write what the stream takes now without blocking; True when nothing is left."""
        while True:
            while self._queue:
                fd = _fileno(self.stream)
                if fd is None:
                    lines = [data for data, _ in self._queue]
                    lines[0] = lines[0][self._offset :]
                    count = sum(n for _, n in self._queue)
                    self._clear()
                    self._write_text(lines, count)
                    break
                if not _writable(fd):
                    return False
                try:
                    written = os.write(fd, self._chunk())
                except BlockingIOError:  # someone else made the shared fd non-blocking
                    return False
                except OSError:  # the stream is gone (EPIPE, EBADF)
                    self.drop_queued()
                    break
                self._consume(written)
            if not self._unreported:
                return True
            self._notice()  # writing resumed: say what was dropped (fits: queue is empty)

    def _chunk(self) -> bytes:
        parts = []
        size = 0
        for index, (line, _) in enumerate(self._queue):
            part = line[self._offset :] if index == 0 else line
            parts.append(part[: _WRITE_CHUNK - size])
            size += len(parts[-1])
            if size >= _WRITE_CHUNK:
                break
        return b"".join(parts)

    def _consume(self, written: int) -> None:
        self._queued -= written
        while written:
            left = len(self._queue[0][0]) - self._offset
            if written < left:
                self._offset += written
                return
            written -= left
            self._queue.popleft()
            self._offset = 0

    def _clear(self) -> None:
        self._queue.clear()
        self._offset = self._queued = 0

    def drop_queued(self) -> None:
        """Count what is still queued as dropped (the pump is finishing)."""
        self._pump.dropped_lines += sum(n for _, n in self._queue)
        self._clear()

    def close(self) -> None:
        """No more lines are coming: :meth:`run` returns once the buffer is written."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Drain the buffer while the stream is writable; poll with backoff while not."""
        delay = _POLL_MIN_S
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup = anyio.Event()
                if not self._queue and not self._closing:
                    await self._wakeup.wait()
                continue
            if self.write_ready():
                delay = _POLL_MIN_S
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX_S)


class OutputPump:
    """The stdout and stderr pipes of one child.

    ``dropped_lines`` counts the lines that were not printed because the parent's stream
    was not writable (they are still in :attr:`tail` if they were among the last).
    """

    def __init__(self, fds: tuple[int, int], prefix: str, tail_lines: int = TAIL_LINES) -> None:
        self.prefix = prefix
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.done = anyio.Event()  # both pipes at EOF
        self.dropped_lines = 0
        self._prefix_bytes = f"[{prefix}] ".encode()
        self._open = [own_fd(fd) for fd in fds]
        self._partial = {fd: bytearray() for fd in fds}
        self._writers = {fds[0]: _Writer(self, "stdout"), fds[1]: _Writer(self, "stderr")}
        for fd in fds:
            os.set_blocking(fd, False)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of unfinished lines held now (at most :data:`MAX_LINE` per pipe)."""
        return max((len(partial) for partial in self._partial.values()), default=0)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written to the parent's streams (bounded per stream)."""
        return sum(writer.queued_bytes for writer in self._writers.values())

    async def run(self) -> None:
        """Read both pipes until EOF and print (a task of the child's watcher)."""
        async with anyio.create_task_group() as tg:
            for writer in self._writers.values():
                tg.start_soon(writer.run)
            async with anyio.create_task_group() as readers:
                for fd in list(self._open):
                    readers.start_soon(self._pump, fd)
            # Set before the writers are done: a watcher waiting for it after the child's
            # exit need not wait for a stalled stream (finish() writes what it takes now
            # and counts the rest as dropped).
            self.done.set()
            for writer in self._writers.values():
                writer.close()

    async def _pump(self, fd: int) -> None:
        while fd in self._open:
            await anyio.wait_readable(fd)
            self._read_available(fd)

    def _read_available(self, fd: int) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._take(fd, b"", final=True)
                self._close(fd)
                return
            self._take(fd, data, final=False)

    def _take(self, fd: int, data: bytes, *, final: bool) -> None:
        """Split what was read into lines; hold only the unfinished rest (bounded)."""
        partial = self._partial[fd]
        lines: list[tuple[bytes, bool]] = []  # (line, split: continues in the next one)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if partial:
                partial += data[start:end]
                self._split(partial, lines)
                lines.append((bytes(partial), False))
                partial.clear()
            else:
                piece = bytearray(data[start:end]) if end - start > MAX_LINE else None
                if piece is not None:
                    self._split(piece, lines)
                    lines.append((bytes(piece), False))
                else:
                    lines.append((data[start:end], False))
            start = end + 1
        # The unfinished rest: appended in pieces, so that it never holds more than
        # MAX_LINE bytes and each byte is copied a bounded number of times.
        while start < len(data):
            take = min(len(data) - start, MAX_LINE + 1 - len(partial))
            partial += data[start : start + take]
            start += take
            self._split(partial, lines)
        if final and partial:
            lines.append((bytes(partial), False))
            partial.clear()
        if lines:
            self._emit(fd, lines)

    @staticmethod
    def _split(buffer: bytearray, lines: list[tuple[bytes, bool]]) -> None:
        """Move leading pieces of ``buffer`` to ``lines`` while it is over MAX_LINE."""
        while len(buffer) > MAX_LINE:
            cut = _utf8_cut(buffer, MAX_LINE)
            lines.append((bytes(buffer[:cut]), True))
            del buffer[:cut]

    def _emit(self, fd: int, lines: list[tuple[bytes, bool]]) -> None:
        out = []
        mark = SPLIT_MARK.encode()
        for raw, split in lines:
            if not split:
                raw = raw.rstrip(b"\r")
            line = raw.decode(errors="replace")
            if len(line) > TAIL_LINE_MAX:
                line = line[:TAIL_LINE_MAX] + " [...]"
            self.tail.append(line + SPLIT_MARK if split else line)
            out.append(self._prefix_bytes + raw + (mark if split else b"") + b"\n")
        self._writers[fd].put(out)

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.remove(fd)
            close_fd(fd)

    def finish(self) -> None:
        """After the child is reaped: read what is left (a bounded amount) without
        waiting, write what the streams take now, count the rest as dropped, and close
        the pipes."""
        for fd in list(self._open):
            self._read_available(fd)
            if fd in self._open:  # a grandchild still holds the pipe: print what we have
                self._take(fd, b"", final=True)
                self._close(fd)
        for writer in self._writers.values():
            writer.write_ready()
            writer.drop_queued()
        self.done.set()
