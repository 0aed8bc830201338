"""Child targets of the control-protocol and forkserver fault tests (stdlib + launch only)."""

from __future__ import annotations

import pickle
import sys
import time

import launch
from _launch_child import _api
from _launch_child._protocol import HEADER, encode

OVERSIZED = (64 << 20) + 1  # one byte over the child-to-parent frame limit


def not_a_frame(kind: str) -> bytes:
    """Bytes that are not a valid child-to-parent frame, of the given kind."""
    if kind == "garbage":
        return b"this is not a launch frame\n" * 4
    if kind == "oversized":  # a header alone: the body would never come
        return HEADER.pack(OVERSIZED)
    if kind == "unloadable":  # a frame whose pickle is cut short
        data = pickle.dumps(("phase", "never", time.monotonic()))[:-4]
        return HEADER.pack(len(data)) + data
    if kind == "unknown_kind":  # a well-formed frame no child sends
        return encode(("bogus", 1))
    raise ValueError(kind)


def send_garbage(kind: str, ready: bool = False) -> None:
    """Write ``kind`` of garbage to the control socket (0.5 s after READY if ``ready``),
    then wait to be torn down."""
    launch.phase("handshake")
    if ready:
        launch.ready({"ok": True})
        time.sleep(0.5)
    channel = _api._channel
    assert channel is not None
    channel.sock.sendall(not_a_frame(kind))
    if ready:
        launch.wait_for_stop(60.0)
    else:
        time.sleep(60.0)


def serve() -> None:
    """READY, then serve until asked to stop."""
    launch.ready()
    launch.wait_for_stop(60.0)


def report_loaded(names: list[str]) -> None:
    """READY with which of ``names`` this child has imported (inherited from a forkserver)."""
    launch.ready({name: name in sys.modules for name in names})
    launch.wait_for_stop(60.0)
