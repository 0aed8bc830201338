"""launch's own file descriptors, so that a child started with ``fork`` can drop them.

A forked child is a copy of the parent, fd table included: without this it would keep
the parent's end of every sibling's control socket (so a sibling never sees EOF), every
pidfd and status pipe, and every ``flock``-ed device-lock fd (so a device stays locked
after its stage is READY). Everything launch opens in the parent is registered here
when it is opened and unregistered when it is closed; :func:`close_in_forked_child`
runs first thing in a forked child.

Only launch's own fds are closed: closing every fd (``closerange``) would also close
fds that objects of the host hold, and a later ``open`` in the child would reuse the
number under them.

:data:`FORK_GUARD` makes "open + register" and "unregister + close" one step as far as
launch's own ``fork`` is concerned: the fork holds it, so it never lands in between and
hands the child an fd (a device lock's, say) that the registry does not list. Only
launch's fork waits for it; the host's own forks are not hooked.
"""

from __future__ import annotations

import os
import socket
import threading
import weakref
from collections.abc import Callable, Collection

_raw: set[int] = set()
_sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

FORK_GUARD = threading.Lock()


def own_fd(fd: int) -> int:
    """Register a raw fd launch opened; returns ``fd``. Where a fork of launch's could
    come between the open and this call, open through :func:`open_owned` instead."""
    _raw.add(fd)
    return fd


def open_owned(opener: Callable[[], int]) -> int:
    """Call ``opener`` (it returns a new fd) and register the fd, with no fork between."""
    with FORK_GUARD:
        return own_fd(opener())


def close_fd(fd: int) -> None:
    """Unregister and close a raw fd registered with :func:`own_fd`, with no fork between."""
    with FORK_GUARD:
        _raw.discard(fd)
        os.close(fd)


def own_socket(sock: socket.socket) -> socket.socket:
    """Register a socket launch opened (it stays registered until it is garbage)."""
    _sockets.add(sock)
    return sock


def owned_fds() -> set[int]:
    """The fds registered now (for tests and diagnostics)."""
    fds = set(_raw)
    for sock in list(_sockets):
        fd = sock.fileno()
        if fd >= 0:
            fds.add(fd)
    return fds


def close_in_forked_child(keep: Collection[int] = ()) -> None:
    """In a child just forked from this process: close every launch fd not in ``keep``.

    Sockets are detached first, so that the copies of the parent's socket objects can
    never close a number that the child has reused by then.
    """
    for sock in list(_sockets):
        fd = sock.fileno()
        if fd >= 0 and fd not in keep:
            sock.detach()
            try:
                os.close(fd)
            except OSError:
                pass
    for fd in list(_raw):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    _raw.clear()
