"""What the driver and a child's Ray host actor say to each other over TCP (stdlib only).

Each child has two TCP connections from its host actor to the driver:

- the **control** connection, handed to the child: launch's own protocol
  (``_launch_child._protocol``) runs over it unchanged;
- the **supervision** connection, kept by the actor: the child's pid and exit code,
  signal requests, heartbeats, the clock exchange.

Both open with a fixed-size binary hello (:func:`hello`): a magic string, the role and the
child's 32-byte random token. The driver checks it before it unpickles anything from the
peer: a connection with a wrong token, the wrong size or garbage is closed unread.

Supervision frames are launch's length-prefixed pickles (:func:`_launch_child._protocol.encode`),
small and of a fixed set of shapes (:data:`HOST_MESSAGES`), each refused over
:data:`MAX_SUPERVISION_FRAME` bytes.
"""

from __future__ import annotations

import socket
from typing import Any

MAGIC = b"launch-ray/1\n"
TOKEN_BYTES = 32
ROLE_CONTROL = b"C"
ROLE_SUPERVISION = b"S"
HELLO_SIZE = len(MAGIC) + 1 + TOKEN_BYTES

HEARTBEAT_S = 0.5
"""How often the host actor tells the driver it is alive."""
LOST_AFTER_S = 3.0
"""Silence on the supervision connection after which the driver declares the node lost."""
MAX_SUPERVISION_FRAME = 4096

# Driver to actor: ("clock",) -> the actor answers ("clock", its monotonic time);
# ("start", env) -> start the child, with the parent-side env overlay in its environment;
# ("signal", n); ("kill_group",).
DRIVER_MESSAGES: dict[str, tuple[type, ...]] = {
    "clock": (),
    "start": (dict,),
    "signal": (int,),
    "kill_group": (),
}
# Actor to driver: ("node", node_id, ip, actor_pid), ("clock", t), ("started", pid),
# ("failed", text) (the child could not be started), ("hb",), ("exit", code).
HOST_MESSAGES: dict[str, tuple[type | tuple[type, ...], ...]] = {
    "node": (str, str, int),
    "clock": ((int, float),),
    "started": (int,),
    "failed": (str,),
    "hb": (),
    "exit": (int,),
}


def hello(role: bytes, token: bytes) -> bytes:
    """The first bytes the actor sends on a connection of ``role``."""
    assert len(token) == TOKEN_BYTES and role in (ROLE_CONTROL, ROLE_SUPERVISION)
    return MAGIC + role + token


def parse_hello(data: bytes) -> tuple[bytes, bytes] | None:
    """``(role, token)`` of a hello, or None if ``data`` is not one."""
    if len(data) != HELLO_SIZE or not data.startswith(MAGIC):
        return None
    role = data[len(MAGIC) : len(MAGIC) + 1]
    if role not in (ROLE_CONTROL, ROLE_SUPERVISION):
        return None
    return role, data[len(MAGIC) + 1 :]


def well_formed(frame: object, shapes: dict[str, tuple[Any, ...]]) -> bool:
    """True if ``frame`` is one of ``shapes``: a tuple of a known kind, then fields of
    its types."""
    if not isinstance(frame, tuple) or not frame or not isinstance(frame[0], str):
        return False
    shape = shapes.get(frame[0])
    if shape is None or len(frame) != len(shape) + 1:
        return False
    return all(
        isinstance(value, types) and not isinstance(value, bool)
        for value, types in zip(frame[1:], shape, strict=True)
    )


def keepalive(sock: socket.socket, idle_s: int = 1, interval_s: int = 1, count: int = 3) -> None:
    """TCP keepalive on ``sock``: a peer whose host vanished (no FIN ever comes) is seen
    as a broken connection within about ``idle_s + interval_s * count`` seconds, by the
    kernel, without a task or a thread of ours."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    except (AttributeError, OSError):  # not Linux: the heartbeats still catch it
        pass
