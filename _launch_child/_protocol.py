"""Length-prefixed pickle frames on the control socket shared by parent and child.

Parent to child: ``("boot", Boot)`` once, then ``("stop",)``.
Child to parent: ``("booted", t)``, ``("phase", name, t)``, ``("ready", payload_bytes, t)``,
``("error", ErrorReport)``. All times are ``time.monotonic()``, which on Linux is one
system-wide clock, so parent and child timestamps are comparable.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 31


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


def encode(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def take_frame(buf: bytearray) -> tuple[Any, ...] | None:
    """Remove and decode the first complete frame of ``buf``; None if there is none yet."""
    if len(buf) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buf)
    if len(buf) < HEADER.size + size:
        return None
    frame: tuple[Any, ...] = pickle.loads(bytes(buf[HEADER.size : HEADER.size + size]))
    del buf[: HEADER.size + size]
    return frame


def split_frames(buf: bytearray) -> list[tuple[Any, ...]]:
    """Remove and decode every complete frame at the start of ``buf``."""
    out: list[tuple[Any, ...]] = []
    while (frame := take_frame(buf)) is not None:
        out.append(frame)
    return out


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
