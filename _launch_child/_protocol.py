"""Typed messages on the control socket shared by parent and child, as length-prefixed
pickle frames.

Parent to child: :class:`Boot` once, then :class:`Stop`.
Child to parent: :class:`Booted`, :class:`Phase`, :class:`Ready`, :class:`Failed`. Each is a
frozen dataclass; the parent checks every one it receives (:func:`check_child_message`)
before it reads a field. All times are the child's ``time.monotonic()``, which on Linux is
one system-wide clock, so parent and child timestamps are comparable on one machine.

Limits: a child-to-parent frame is at most :data:`MAX_CHILD_FRAME` bytes (the parent
refuses a longer one from its header alone, so a hostile child costs it bounded memory);
a parent-to-child frame at most :data:`MAX_FRAME`.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any, cast

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 31  # parent to child: the boot frame carries the pickled kwargs
MAX_CHILD_FRAME = 64 << 20  # child to parent: the parent buffers at most this per child


class ProtocolError(ValueError):
    """Bytes on a control socket that are not a valid frame: a length over the limit, a
    pickle that does not load, a message of unknown kind or shape; or a message too
    large to send."""


# --- parent to child ---


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
class Stop:
    """The parent asks the child to stop (``launch.stop_requested()`` turns true)."""


# --- child to parent ---


@dataclass(frozen=True)
class Booted:
    """The bootstrap got its boot message, at ``at``, before it applied ``env``."""

    at: float


@dataclass(frozen=True)
class Phase:
    """The child entered startup phase ``name`` (``launch.phase``) at ``at``."""

    name: str
    at: float


@dataclass(frozen=True)
class Ready:
    """The child called ``launch.ready``, at ``at``; ``payload`` is the pickled payload."""

    payload: bytes
    at: float


@dataclass(frozen=True)
class ErrorReport:
    """An exception raised in the child, as text: it must reach a parent without the types."""

    type_name: str
    message: str
    traceback: str
    phase: str | None
    ready: bool
    at: float  # when the child failed, by its clock: what orders root causes


@dataclass(frozen=True)
class Failed:
    """The child's target raised (or exited non-zero); the child is exiting."""

    report: ErrorReport


ChildMessage = Booted | Phase | Ready | Failed
ParentMessage = Boot | Stop


def encode(message: object, limit: int = MAX_FRAME) -> bytes:
    """One frame: a 4-byte length, then the pickled ``message``. Raises
    :class:`ProtocolError` if the pickle is longer than ``limit``."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > limit:
        raise ProtocolError(
            f"a {type(message).__name__} frame of {len(data)} bytes is over the control "
            f"protocol's limit of {limit} bytes"
        )
    return HEADER.pack(len(data)) + data


def take_frame(buf: bytearray, limit: int = MAX_FRAME) -> object | None:
    """Remove and decode the first complete frame of ``buf``; None if there is none yet.

    A length over ``limit`` is refused as soon as the header is in, before the body is
    waited for; a body that does not unpickle is refused too. Both raise
    :class:`ProtocolError` and leave ``buf`` as it was. What the frame holds is not
    checked here: see :func:`check_child_message`.
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
            frame: object = pickle.loads(body)
    except Exception as exc:  # anything a hostile pickle can raise
        raise ProtocolError(
            f"a frame of {size} bytes does not unpickle: {type(exc).__name__}: {exc}"[:500]
        ) from None
    if frame is None:  # None means "no frame yet" to the callers
        raise ProtocolError("a frame holds None, not a message")
    del buf[:end]
    return frame


def split_frames(buf: bytearray, limit: int = MAX_FRAME) -> list[object]:
    """Remove and decode every complete frame at the start of ``buf`` (see :func:`take_frame`)."""
    out: list[object] = []
    while (frame := take_frame(buf, limit)) is not None:
        out.append(frame)
    return out


_TIME = (int, float)
_TEXT_OR_NONE = (str, type(None))
# The fields a child's message must have, with their types: a pickle can build any
# importable class with any attributes, so each is checked before it is read.
CHILD_MESSAGES: dict[type, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    Booted: (("at", _TIME),),
    Phase: (("name", str), ("at", _TIME)),
    Ready: (("payload", bytes), ("at", _TIME)),
    Failed: (("report", ErrorReport),),
}
_REPORT_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("type_name", str),
    ("message", str),
    ("traceback", str),
    ("phase", _TEXT_OR_NONE),
    ("ready", bool),
    ("at", _TIME),
)
_MISSING = object()


def _wrong_field(value: object, fields: tuple[tuple[str, type | tuple[type, ...]], ...]) -> str:
    """The first field of ``value`` that is missing or of the wrong type, as words; ''."""
    for name, types in fields:
        field = getattr(value, name, _MISSING)
        if field is _MISSING:
            return f"no {name!r}"
        if not isinstance(field, types):
            return f"{name!r} is a {type(field).__name__}"
    return ""


def check_child_message(frame: object) -> ChildMessage:
    """``frame`` if it is a message a child may send (its type, and each field's type,
    an error report's included); else raise :class:`ProtocolError`."""
    fields = CHILD_MESSAGES.get(type(frame))
    if fields is None:
        if isinstance(frame, tuple) and frame and isinstance(frame[0], str):
            raise ProtocolError(f"a message of unknown kind {frame[0][:80]!r}")
        raise ProtocolError(f"a message of unknown type {type(frame).__qualname__[:80]!r}")
    kind = type(frame).__name__
    wrong = _wrong_field(frame, fields)
    if wrong:
        raise ProtocolError(f"a {kind!r} message of the wrong shape ({wrong})")
    if isinstance(frame, Failed):
        wrong = _wrong_field(frame.report, _REPORT_FIELDS)
        if wrong:
            raise ProtocolError(f"a {kind!r} message with a malformed report ({wrong})")
    return cast(ChildMessage, frame)


def recv_frame_blocking(sock: socket.socket, buf: bytearray) -> object | None:
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
