"""Length-prefixed pickle frames on the control socket shared by parent and child.

Parent to child: ``("boot", Boot)`` once, then ``("stop",)``.
Child to parent: ``("booted", t)``, ``("phase", name, t)``, ``("ready", payload_bytes, t)``,
``("error", ErrorReport)``. All times are ``time.monotonic()``, which on Linux is one
system-wide clock, so parent and child timestamps are comparable.

Limits: a child-to-parent frame is at most :data:`MAX_CHILD_FRAME` bytes (the parent
refuses a longer one from its header alone, so a hostile child costs it bounded memory);
a parent-to-child frame at most :data:`MAX_FRAME`.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 31  # parent to child: the boot frame carries the pickled kwargs
MAX_CHILD_FRAME = 64 << 20  # child to parent: the parent buffers at most this per child


class ProtocolError(ValueError):
    """Bytes on a control socket that are not a valid frame: a length over the limit, a
    pickle that does not load, a message of unknown kind or shape; or a message too
    large to send."""


@dataclass(frozen=True)
class Boot:
    """Everything the child needs to run its target; sent right after the spawn."""

    name: str
    target: str | None  # "module:qualname", or None when target_pickle is set
    target_pickle: bytes | None
    kwargs_pickle: bytes
    env: dict[str, str]
    sys_path: list[str]
    cwd: str
    main_prep: dict[str, Any] | None = None  # multiprocessing preparation data (__main__ targets)


@dataclass(frozen=True)
class ErrorReport:
    """An exception raised in the child, as text: it must reach a parent without the types."""

    type_name: str
    message: str
    traceback: str
    phase: str | None
    ready: bool
    at: float
    extra: dict[str, Any] = field(default_factory=dict)


def encode(message: tuple[Any, ...], limit: int = MAX_FRAME) -> bytes:
    """One frame: a 4-byte length, then the pickled ``message``. Raises
    :class:`ProtocolError` if the pickle is longer than ``limit``."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > limit:
        raise ProtocolError(
            f"a {message[0]!r} frame of {len(data)} bytes is over the control protocol's "
            f"limit of {limit} bytes"
        )
    return HEADER.pack(len(data)) + data


def take_frame(buf: bytearray, limit: int = MAX_FRAME) -> tuple[Any, ...] | None:
    """Remove and decode the first complete frame of ``buf``; None if there is none yet.

    A length over ``limit`` is refused as soon as the header is in, before the body is
    waited for; a body that does not unpickle to a tuple is refused too. Both raise
    :class:`ProtocolError` and leave ``buf`` as it was.
    """
    if len(buf) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buf)
    if size > limit:
        raise ProtocolError(
            f"a frame header announces {size} bytes, over the limit of {limit}: "
            f"the stream is not launch's protocol (it starts with {bytes(buf[:16])!r})"
        )
    end = HEADER.size + size
    if len(buf) < end:
        return None
    try:
        with memoryview(buf) as view, view[HEADER.size : end] as body:
            frame = pickle.loads(body)
    except Exception as exc:  # anything a hostile pickle can raise
        raise ProtocolError(
            f"a frame of {size} bytes does not unpickle: {type(exc).__name__}: {exc}"[:500]
        ) from None
    if not isinstance(frame, tuple) or not frame or not isinstance(frame[0], str):
        raise ProtocolError(f"a frame holds a {type(frame).__name__}, not a message tuple")
    del buf[:end]
    return frame


def split_frames(buf: bytearray, limit: int = MAX_FRAME) -> list[tuple[Any, ...]]:
    """Remove and decode every complete frame at the start of ``buf`` (see :func:`take_frame`)."""
    out: list[tuple[Any, ...]] = []
    while (frame := take_frame(buf, limit)) is not None:
        out.append(frame)
    return out


_TIME = (int, float)
CHILD_MESSAGES: dict[str, tuple[type | tuple[type, ...], ...]] = {
    "booted": (_TIME,),
    "phase": (str, _TIME),
    "ready": (bytes, _TIME),
    "error": (ErrorReport,),
}


def check_child_message(frame: tuple[Any, ...]) -> tuple[Any, ...]:
    """``frame`` if it is a message a child may send (kind and field types); else raise
    :class:`ProtocolError`."""
    kind = frame[0]
    shape = CHILD_MESSAGES.get(kind)
    if shape is None:
        raise ProtocolError(f"a message of unknown kind {kind[:80]!r}")
    fields = frame[1:]
    if len(fields) != len(shape) or not all(
        isinstance(value, types) for value, types in zip(fields, shape, strict=True)
    ):
        got = ", ".join(type(value).__name__ for value in fields[:8])
        raise ProtocolError(f"a {kind!r} message of the wrong shape ({got})")
    if kind == "error":
        report: ErrorReport = fields[0]
        text = (report.type_name, report.message, report.traceback)
        if not all(isinstance(value, str) for value in text) or not isinstance(
            report.phase, (str, type(None))
        ):
            raise ProtocolError("an 'error' message whose report is not text")
    return frame


def recv_frame_blocking(sock: socket.socket, buf: bytearray) -> tuple[Any, ...] | None:
    """Block until one frame arrives; ``None`` on EOF (the peer is gone).

    Bytes of later frames stay in ``buf`` for the next reader.
    """
    while (frame := take_frame(buf)) is None:
        try:
            data = sock.recv(1 << 16)
        except OSError:
            return None
        if not data:
            return None
        buf += data
    return frame
