"""The child API: ``ready``, ``phase``, ``stop_requested``, ``wait_for_stop``.

These are re-exported as ``launch.ready`` and friends. They work only inside a
process started by launch; elsewhere they raise ``RuntimeError``.
"""

from __future__ import annotations

import dataclasses
import pickle
import socket
import threading
import time
from typing import Any

from ._protocol import (
    MAX_CHILD_FRAME,
    ChildMessage,
    ErrorReport,
    Failed,
    Phase,
    ProtocolError,
    Ready,
    encode,
)

# Room left in a frame for the rest of a READY message around its payload.
_READY_OVERHEAD = 1 << 10
_ERROR_TEXT_MAX = 1 << 20  # characters of an error report's message and traceback, each


class _Channel:
    """The child's end of the control socket and what the child knows about itself."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.phase: str | None = None
        self.ready_sent = False
        self.stop_event = threading.Event()
        self._send_lock = threading.Lock()

    def send(self, message: ChildMessage) -> None:
        """Send one message; raises :class:`ProtocolError` (a ``ValueError``) if it is
        over the child-to-parent frame limit (an error report is cut to fit instead)."""
        try:
            data = encode(message, MAX_CHILD_FRAME)
        except ProtocolError:
            if not isinstance(message, Failed):
                raise
            data = encode(Failed(_cut(message.report)), MAX_CHILD_FRAME)
        with self._send_lock:
            self.sock.sendall(data)


def _cut(report: ErrorReport) -> ErrorReport:
    """``report`` with its text cut to fit a frame: the root cause must reach the parent."""

    def cut(text: str) -> str:
        if len(text) <= _ERROR_TEXT_MAX:
            return text
        half = _ERROR_TEXT_MAX // 2
        return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"

    return dataclasses.replace(report, message=cut(report.message), traceback=cut(report.traceback))


_channel: _Channel | None = None


def _install(channel: _Channel | None) -> None:
    global _channel
    _channel = channel


def _require(what: str) -> _Channel:
    if _channel is None:
        raise RuntimeError(
            f"launch.{what}() must be called inside a process started by launch "
            "(open_group / open_pipeline / start_group); this process was not"
        )
    return _channel


def ready(payload: Any = None) -> None:
    """Tell the parent that startup is done, handing it ``payload`` (must be picklable).

    Call it once. The parent's ``open_group`` block is entered when every child
    of the group has called it. The pickled payload may be at most about 64 MiB (the
    control protocol's limit); a larger one raises ``ValueError`` and READY is not sent.

    Args:
        payload: Anything picklable, handed to the parent as
            :attr:`launch.Child.payload` (unpickled there, so its class must be
            importable in the parent too).

    Raises:
        RuntimeError: The process was not started by launch, or ``ready()`` was
            already called in it.
        TypeError: ``payload`` cannot be pickled.
        ValueError: The pickled ``payload`` is over the control protocol's limit
            (64 MiB less 1 KiB).
    """
    channel = _require("ready")
    if channel.ready_sent:
        raise RuntimeError(f"launch.ready() was already called in child {channel.name!r}")
    try:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"launch.ready() payload of child {channel.name!r} is not picklable: {exc}"
        ) from exc
    if len(data) > MAX_CHILD_FRAME - _READY_OVERHEAD:
        raise ValueError(
            f"launch.ready() payload of child {channel.name!r} is {len(data)} bytes pickled, "
            f"over the control protocol's limit of {MAX_CHILD_FRAME - _READY_OVERHEAD} bytes; "
            "hand large data over another way (a file, shared memory, a socket) and pass "
            "its name in the payload"
        )
    channel.send(Ready(data, time.monotonic()))
    channel.ready_sent = True


def phase(name: str) -> None:
    """Record that the child entered startup phase ``name`` (shown in errors and timelines).

    Args:
        name: The phase's name, e.g. ``"load_model"`` (the parent keeps its first 200
            characters).

    Raises:
        ValueError: ``name`` is not a non-empty string.
        RuntimeError: The process was not started by launch.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("launch.phase() needs a non-empty string")
    channel = _require("phase")
    channel.phase = name
    channel.send(Phase(name, time.monotonic()))


def stop_requested() -> bool:
    """True once the parent has asked this child to stop (cooperative stop).

    Returns:
        Whether the stop was asked for; it stays true once it is.

    Raises:
        RuntimeError: The process was not started by launch.
    """
    return _require("stop_requested").stop_event.is_set()


def wait_for_stop(timeout: float | None = None) -> bool:
    """Block until the parent asks this child to stop; returns False on ``timeout``.

    Args:
        timeout: The most seconds to wait; ``None`` to wait until the stop is asked
            for.

    Returns:
        True once the stop was asked for (at once if it already was), False if
        ``timeout`` passed first.

    Raises:
        RuntimeError: The process was not started by launch.
    """
    return _require("wait_for_stop").stop_event.wait(timeout)
