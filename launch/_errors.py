"""Failures of launched children, as exceptions with the facts as attributes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

TRACEBACK_TAIL_LINES = 12


class ChildFailed(Exception):
    """One child failed. Base of :class:`SpawnFailed`, :class:`ChildCrashed`,
    :class:`ReadyTimeout` and :class:`ChildDied` (and, for a stage that could not lock
    its devices, :class:`DeviceLockError`).

    Attributes: ``name``, ``group``, ``pid`` (None if never spawned), ``exitcode``
    (negative: killed by that signal; None: still running when it was declared failed),
    ``phase`` (the child's last ``launch.phase``), ``remote_traceback`` (the child's own
    traceback text, or the parent's for a :class:`SpawnFailed`), ``remote_type``,
    ``spawned_at`` and ``failed_at`` (``time.monotonic()`` values), ``output_tail``
    (its last lines of stdout/stderr, with ``output="prefix"``).
    """

    what = "failed"

    def __init__(
        self,
        name: str,
        *,
        group: str = "",
        pid: int | None = None,
        exitcode: int | None = None,
        phase: str | None = None,
        remote_traceback: str | None = None,
        remote_type: str | None = None,
        remote_message: str | None = None,
        spawned_at: float | None = None,
        failed_at: float = 0.0,
        detail: str = "",
        output_tail: list[str] | None = None,
    ) -> None:
        super().__init__(name)
        self.name = name
        self.group = group
        self.pid = pid
        self.exitcode = exitcode
        self.phase = phase
        self.remote_traceback = remote_traceback
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.spawned_at = spawned_at
        self.failed_at = failed_at
        self.detail = detail
        self.output_tail = output_tail

    def summary(self) -> str:
        """One line: who, what, where."""
        who = f"child {self.name!r}"
        if self.group:
            who += f" of group {self.group!r}"
        if self.pid is not None:
            who += f" (pid {self.pid})"
        parts = [f"{who} {self.what}"]
        if self.remote_type:
            msg = f": {self.remote_message}" if self.remote_message else ""
            parts.append(f"with {self.remote_type}{msg}")
        if self.exitcode is not None:
            parts.append(_describe_exit(self.exitcode))
        parts.append(f"in phase {self.phase!r}" if self.phase else "before any launch.phase()")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)

    def __str__(self) -> str:
        text = self.summary()
        if self.remote_traceback:
            lines = self.remote_traceback.rstrip("\n").splitlines()
            tail = lines[-TRACEBACK_TAIL_LINES:]
            cut = "" if len(lines) <= len(tail) else f" (last {len(tail)} lines)"
            text += f"\n--- traceback of {self.name!r}{cut} ---\n" + "\n".join(tail)
        if self.output_tail:
            text += f"\n--- last output of {self.name!r} ---\n" + "\n".join(self.output_tail)
        return text

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.name, dict(self.__dict__)))


def _rebuild(cls: type[ChildFailed], name: str, state: dict[str, object]) -> ChildFailed:
    exc = cls(name)
    exc.__dict__.update(state)
    return exc


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class SpawnFailed(ChildFailed):
    """The spawn itself failed in the parent: bad target, unpicklable kwargs, fork error."""

    what = "could not be spawned"


class ChildCrashed(ChildFailed):
    """The child raised, or exited (with any code, 0 included), before READY."""

    what = "crashed before READY"


class ReadyTimeout(ChildFailed):
    """READY did not come within the child's ``ready_timeout``."""

    what = "did not become READY in time"


class ChildDied(ChildFailed):
    """A child exited after READY while the group was running."""

    what = "died after READY"


class DeviceLockError(ChildFailed):
    """A stage could not lock its devices; nothing of it was spawned.

    Raised as itself when the lock directory or a lock file cannot be used (not a
    directory, no permission, no space, owned by another user, writable by others, a
    symbolic link, ...), and as its subclass :class:`DeviceLockTimeout` when a device
    stays held too long. ``name`` and ``group`` are the stage's name, ``path`` the
    directory or lock file at fault, ``device`` the device (``""`` when the directory
    is at fault) and ``reason`` what is wrong with ``path``.
    """

    what = "could not lock its devices"

    def __init__(
        self,
        name: str,
        *,
        path: object = None,
        reason: str = "",
        device: str = "",
        failed_at: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            name,
            group=name,
            failed_at=time.monotonic() if failed_at is None else failed_at,
            **kwargs,
        )
        self.path = path
        self.reason = reason
        self.device = device

    def summary(self) -> str:
        return f"stage {self.name!r} cannot lock its devices: {self.path}: {self.reason}"


class DeviceLockTimeout(DeviceLockError):
    """A stage could not lock its devices in time; nothing of it was spawned.

    ``name`` and ``group`` are the stage's name; ``device`` is the device it was
    waiting for, ``holder`` the pid that holds that device's lock (None if unknown),
    ``path`` the lock file.
    """

    def __init__(
        self,
        name: str,
        *,
        device: str = "",
        holder: int | None = None,
        path: object = None,
        failed_at: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            name, path=path, reason="timed out", device=device, failed_at=failed_at, **kwargs
        )
        self.holder = holder

    def summary(self) -> str:
        who = "an unknown process" if self.holder is None else f"pid {self.holder}"
        return (
            f"stage {self.name!r} timed out waiting for device {self.device!r}: "
            f"its lock is held by {who} (lock file {self.path})"
        )


class LaunchFailed(ExceptionGroup[ChildFailed]):
    """Raised by ``open_group`` / ``open_pipeline``: every leaf is a :class:`ChildFailed`.

    ``.first`` is the earliest failure, the root cause; siblings stopped because of it
    are not in the group.
    """

    def __new__(cls, message: str, exceptions: Sequence[ChildFailed]) -> LaunchFailed:
        return super().__new__(cls, message, exceptions)

    @property
    def first(self) -> ChildFailed:
        """The earliest failure by ``failed_at``."""
        leaves = list(_leaves(self))
        return min(leaves, key=lambda exc: exc.failed_at)

    def derive(self, excs: Sequence[ChildFailed]) -> LaunchFailed:  # type: ignore[override]
        return LaunchFailed(self.message, excs)


def _leaves(group: BaseExceptionGroup[ChildFailed]) -> list[ChildFailed]:
    out: list[ChildFailed] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def raise_failures(
    name: str, failures: Sequence[ChildFailed], unreaped: Sequence[object], *, kind: str = "group"
) -> None:
    """Raise the LaunchFailed of ``failures`` (if any), noting processes left unreaped."""
    if not failures:
        return
    error = launch_failed(name, failures, kind=kind)
    for stuck in unreaped:
        error.add_note(str(stuck))
    raise error


def launch_failed(
    name: str, failures: Sequence[ChildFailed], *, kind: str = "group"
) -> LaunchFailed:
    """Build the group (or pipeline) error; its message carries the root cause's summary."""
    ordered = sorted(failures, key=lambda exc: exc.failed_at)
    more = f" (+{len(ordered) - 1} more)" if len(ordered) > 1 else ""
    return LaunchFailed(f"{kind} {name!r} failed: {ordered[0].summary()}{more}", ordered)
