"""Cross-process device locks: one ``flock``-ed file per device in a lock directory.

A stage holds the locks of its devices from before its first spawn until every one of
its children is READY, so two stages (in this process or in another) that share a
device initialize one after another, while stages on disjoint devices go concurrently.

The wait is a poll with ``anyio.sleep``: cancellable at every step, never a thread
parked in a blocking ``flock`` that a cancel cannot reach. ``flock`` locks belong to
the open file, so two stages of one process exclude each other too, and the kernel
drops a lock when its holder dies: a crashed launcher never leaves a device locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

import anyio

from ._errors import DeviceLockTimeout

LOCK_DIR_ENV = "LAUNCH_LOCK_DIR"
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.1
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def default_lock_dir() -> Path:
    """``$LAUNCH_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/launch/devices``, else a per-user
    directory under the system temp dir."""
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "launch" / "devices"
    import tempfile

    return Path(tempfile.gettempdir()) / f"launch-{os.getuid()}" / "devices"


def lock_path(lock_dir: Path, device: str) -> Path:
    """The lock file of one device."""
    return lock_dir / f"device-{_SAFE.sub('_', device)}.lock"


def holder_pid(path: Path) -> int | None:
    """The pid the current holder wrote into the lock file, if any."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _mark_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


async def _lock_one(path: Path, device: str, stage: str, deadline: float | None) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        delay = _POLL_MIN_S
        while not _try_lock(fd):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise DeviceLockTimeout(stage, device=device, holder=holder_pid(path), path=path)
            wait = delay if deadline is None else min(delay, deadline - now)
            await anyio.sleep(wait)
            delay = min(delay * 2, _POLL_MAX_S)
        _mark_holder(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


class DeviceLocks:
    """The device locks one stage holds; :meth:`release` is idempotent."""

    def __init__(self, fds: list[int], waited_s: float) -> None:
        self._fds = fds
        self.waited_s = waited_s

    @property
    def held(self) -> bool:
        """True until released."""
        return bool(self._fds)

    def release(self) -> None:
        """Drop every lock (closing the file drops its flock)."""
        while self._fds:
            fd = self._fds.pop()
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)


async def acquire_device_locks(
    devices: Iterable[str],
    *,
    stage: str,
    lock_dir: Path,
    timeout: float | None,
) -> DeviceLocks:
    """Take the lock of every device in ``devices``, waiting (cancellably) for holders.

    Devices are locked in sorted order, so two stages asking for overlapping sets can
    never deadlock. Raises :class:`DeviceLockTimeout`, naming the device and the pid
    that holds it, if they are not all held within ``timeout`` seconds; on any error or
    cancel, the locks taken so far are released.
    """
    wanted = sorted(set(devices))
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    locks = DeviceLocks([], 0.0)
    try:
        if wanted:
            lock_dir.mkdir(parents=True, exist_ok=True)
        for device in wanted:
            locks._fds.append(await _lock_one(lock_path(lock_dir, device), device, stage, deadline))
    except BaseException:
        locks.release()
        raise
    locks.waited_s = time.monotonic() - started
    return locks
