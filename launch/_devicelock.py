"""Cross-process device locks: one ``flock``-ed file per device in a lock directory.

A stage holds the locks of its devices from before its first spawn until every one of
its children is READY, so two stages (in this process or in another) that share a
device initialize one after another, while stages on disjoint devices go concurrently.

The wait is a poll with ``anyio.sleep``: cancellable at every step, never a thread
parked in a blocking ``flock`` that a cancel cannot reach. ``flock`` locks belong to
the open file, so two stages of one process exclude each other too, and the kernel
drops a lock when its holder dies: a crashed launcher never leaves a device locked.

Lock directories are places other users may reach (``/tmp``), so nothing in them is
trusted. The default per-user directory is created private (0700) one component at
a time and each component is verified (a directory, not a link, owned by this user,
not writable by group or others) before use; a configured directory must be owned by
this user or root and, if group/other-writable, sticky. Everything below the verified
directory is opened relative to its fd, lock files with ``O_NOFOLLOW``, and a lock
file is written (the holder's pid) only once it is known to be a regular file with
one link that this user owns. Nothing is ever truncated: the pid record is
overwritten in place.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterable
from pathlib import Path

import anyio

from ._errors import DeviceLockError, DeviceLockTimeout
from ._fds import close_fd, open_owned, own_fd

LOCK_DIR_ENV = "LAUNCH_LOCK_DIR"
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.1
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HOLDER_BYTES = 12  # the pid record, padded: overwritten in place, never truncated
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a lock file's name must not block the open
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _open_owned(name: str, flags: int, mode: int, dir_fd: int) -> int:
    # Registered with no launch fork in between: a forked child must never keep a copy
    # of a lock fd, and so of its flock (launch._fds).
    return open_owned(lambda: os.open(name, flags, mode, dir_fd=dir_fd))


class _Unusable(Exception):
    """``path`` cannot serve as a lock directory or lock file, for ``reason``."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _private_base() -> tuple[Path, tuple[str, ...]]:
    """The default directory as (a base that exists, the components launch creates)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        try:
            st = os.stat(runtime)
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                return Path(runtime), ("launch", "devices")
    import tempfile

    return Path(tempfile.gettempdir()), (f"launch-{os.getuid()}", "devices")


def default_lock_dir() -> Path:
    """``$LAUNCH_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/launch/devices`` (when that
    directory is this user's), else ``launch-<uid>/devices`` under the system temp dir.

    The last two are the private default: created 0700 and verified before use.
    """
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    base, parts = _private_base()
    return base.joinpath(*parts)


def lock_path(lock_dir: Path, device: str) -> Path:
    """The lock file of one device."""
    return lock_dir / f"device-{_SAFE.sub('_', device)}.lock"


def _describe(st: os.stat_result) -> str:
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(st.st_mode)), "an unknown kind of file")


def _why(exc: OSError, path: Path, dir_fd: int | None = None) -> _Unusable:
    """An OSError met at ``path`` as an _Unusable with a reason a user can act on."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:  # say what is in the way rather than the errno's words
            where = path.name if dir_fd is not None else path
            st = os.stat(where, dir_fd=dir_fd, follow_symlinks=False)
        except NotADirectoryError:
            return _Unusable(path, "a directory above it is not a directory")
        except OSError:
            pass
        else:
            kind = _describe(st)
            wanted = "a regular file" if exc.errno == errno.ELOOP else "a directory"
            if kind != wanted:
                return _Unusable(path, f"is {kind}, not {wanted}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _Unusable(path, f"permission denied to this user (uid {os.getuid()})")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _Unusable(path, "no space left on its file system")
    reason = exc.strerror or str(exc)
    return _Unusable(path, reason[:1].lower() + reason[1:])


def _open_private_dir(base: Path, parts: tuple[str, ...]) -> int:
    """Create (0700) and verify each of ``parts`` under ``base``; the last one's fd."""
    uid = os.getuid()
    where = base
    try:
        fd = os.open(base, _DIR_FLAGS)
    except OSError as exc:
        raise _why(exc, base) from None
    try:
        for part in parts:
            where = where / part
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise _why(exc, where) from None
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise _why(exc, where, fd) from None
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            if st.st_uid != uid:
                raise _Unusable(
                    where,
                    f"is owned by uid {st.st_uid}, not by this user (uid {uid}): "
                    "another user may have created it; remove it, or set LAUNCH_LOCK_DIR",
                )
            if st.st_mode & 0o022:
                raise _Unusable(
                    where,
                    f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                    "the default lock directory must be private; chmod 700 it",
                )
            if st.st_mode & 0o077:  # made readable by an older launch: keep it private
                os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_configured_dir(path: Path) -> int:
    """Create ``path`` if needed (0700) and verify it as a configured lock directory."""
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except FileExistsError:
        pass  # not a directory: the open below says what it is
    except OSError as exc:
        raise _why(exc, Path(exc.filename) if exc.filename else path) from None
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise _why(exc, path) from None
    try:
        st = os.fstat(fd)
        if st.st_uid not in (os.getuid(), 0):
            raise _Unusable(
                path,
                f"is owned by uid {st.st_uid}: a lock directory must be owned by "
                f"this user (uid {os.getuid()}) or root",
            )
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise _Unusable(
                path,
                f"is writable by group or others but not sticky "
                f"(mode {stat.S_IMODE(st.st_mode):04o}), so others could replace "
                "lock files in it: chmod +t it, or chmod go-w it",
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_lock_dir(lock_dir: Path) -> tuple[int, bool]:
    """The verified lock directory's fd, and whether it is the private default."""
    base, parts = _private_base()
    if lock_dir == base.joinpath(*parts):
        return _open_private_dir(base, parts), True
    return _open_configured_dir(lock_dir), False


def _open_lock_file(dir_fd: int, path: Path, private: bool) -> tuple[int, bool]:
    """Open (creating) one lock file and verify it; returns (fd, may write the pid)."""
    uid = os.getuid()
    mode = 0o600 if private else 0o644
    try:
        fd = _open_owned(path.name, os.O_RDWR | os.O_CREAT | _FILE_FLAGS, mode, dir_fd)
    except PermissionError as denied:
        if private:
            raise _why(denied, path) from None
        # another user's lock file in a shared directory: lock it, never write it
        try:
            fd = _open_owned(path.name, os.O_RDONLY | _FILE_FLAGS, 0, dir_fd)
        except FileNotFoundError:
            raise _why(denied, path) from None
        except OSError as exc:
            raise _why(exc, path, dir_fd) from None
    except OSError as exc:
        raise _why(exc, path, dir_fd) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unusable(path, f"is {_describe(st)}, not a regular file")
        if st.st_nlink != 1:
            raise _Unusable(
                path, f"has {st.st_nlink} hard links: a lock file must be the only name of its file"
            )
        if st.st_uid != uid and private:
            raise _Unusable(path, f"is owned by uid {st.st_uid}, not by this user (uid {uid})")
        if st.st_uid == uid and private and st.st_mode & 0o077:
            os.fchmod(fd, 0o600)  # made readable by an older launch
        writable = st.st_uid == uid and _is_rdwr(fd)
    except BaseException:
        close_fd(fd)
        raise
    return fd, writable


def _is_rdwr(fd: int) -> bool:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR


def _read_holder(fd: int) -> int | None:
    """The pid the current holder wrote into the lock file, if any."""
    try:
        first = os.pread(fd, 64, 0).split(b"\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def _write_holder(fd: int, pid: int | None) -> None:
    os.pwrite(fd, ("" if pid is None else str(pid)).ljust(_HOLDER_BYTES - 1).encode() + b"\n", 0)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


async def _lock_one(
    dir_fd: int, path: Path, private: bool, device: str, stage: str, deadline: float | None
) -> tuple[int, bool]:
    fd, writable = _open_lock_file(dir_fd, path, private)
    try:
        delay = _POLL_MIN_S
        while not _try_lock(fd):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise DeviceLockTimeout(stage, device=device, holder=_read_holder(fd), path=path)
            wait = delay if deadline is None else min(delay, deadline - now)
            await anyio.sleep(wait)
            delay = min(delay * 2, _POLL_MAX_S)
        if writable:
            _write_holder(fd, os.getpid())
    except OSError as exc:  # flock or the pid record: ENOLCK, ENOSPC, EIO, ...
        close_fd(fd)
        raise _why(exc, path) from None
    except BaseException:
        close_fd(fd)
        raise
    return fd, writable


class DeviceLocks:
    """The device locks one stage holds; :meth:`release` is idempotent."""

    def __init__(self, held: list[tuple[int, bool]], waited_s: float) -> None:
        self._held = held  # (fd, whether launch wrote its pid into the file)
        self.waited_s = waited_s

    @property
    def held(self) -> bool:
        """True until released."""
        return bool(self._held)

    def release(self) -> None:
        """Drop every lock (closing the file drops its flock)."""
        while self._held:
            fd, written = self._held.pop()
            if written:
                try:
                    _write_holder(fd, None)
                except OSError:
                    pass
            close_fd(fd)


async def acquire_device_locks(
    devices: Iterable[str],
    *,
    stage: str,
    lock_dir: Path,
    timeout: float | None,
) -> DeviceLocks:
    """Take the lock of every device in ``devices``, waiting (cancellably) for holders.

    Devices are locked in sorted order, so two stages asking for overlapping sets can
    never deadlock. If ``lock_dir`` is :func:`default_lock_dir`'s private default it is
    created 0700 and must be this user's and private; any other directory must be owned
    by this user or root and, if group/other-writable, sticky. On any error or cancel,
    the locks taken so far are released.

    Raises:
        DeviceLockTimeout: not every lock was held within ``timeout`` seconds; names
            the device and the pid that holds it.
        DeviceLockError: the lock directory or a lock file cannot be used; names the
            path and what is wrong with it.
    """
    wanted = sorted(set(devices))
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    locks = DeviceLocks([], 0.0)
    if not wanted:
        return locks
    lock_dir = Path(lock_dir)
    try:
        dir_fd, private = _open_lock_dir(lock_dir)
        own_fd(dir_fd)
        try:
            for device in wanted:
                path = lock_path(lock_dir, device)
                locks._held.append(await _lock_one(dir_fd, path, private, device, stage, deadline))
        finally:
            close_fd(dir_fd)
    except (OSError, _Unusable) as exc:
        locks.release()
        if isinstance(exc, OSError):
            exc = _why(exc, Path(exc.filename) if exc.filename else lock_dir)
        device = next((d for d in wanted if lock_path(lock_dir, d) == exc.path), "")
        raise DeviceLockError(stage, path=exc.path, reason=exc.reason, device=device) from None
    except BaseException:
        locks.release()
        raise
    locks.waited_s = time.monotonic() - started
    return locks
