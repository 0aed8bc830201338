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

    ``str(exc)`` is :meth:`summary`, then the last lines of the child's traceback and
    of its output, when known. It pickles with every attribute.

    Attributes:
        name (str): The child's name.
        group (str): The name of its group (its stage, in a pipeline).
        pid (int | None): Its process id; None if it was never spawned.
        exitcode (int | None): Its exit code (negative: killed by that signal); None
            if it was never spawned, or still running when it was declared failed and
            not reaped by the end of the teardown.
        phase (str | None): The child's last ``launch.phase()``, or None.
        remote_traceback (str | None): The child's own traceback text, when it
            reported an exception; None otherwise (a :class:`SpawnFailed` has the
            parent's exception as its ``__cause__`` instead).
        remote_type (str | None): The type name of that exception (for a
            :class:`SpawnFailed`, of the parent's exception), or None.
        remote_message (str | None): Its message, or None.
        spawned_at (float | None): ``time.monotonic()`` when the child was spawned;
            None if it never was.
        failed_at (float): When it failed, on the system-wide ``time.monotonic()``
            clock: what :attr:`LaunchFailed.first` orders by.
        detail (str): More on what happened (e.g. ``"ready_timeout=5.0s"``), or ``""``.
        output_tail (list[str] | None): Its last lines of stdout/stderr, with
            ``output="prefix"``; None otherwise.
        what (str): The class's phrase for what went wrong, used in :meth:`summary`
            (e.g. ``"crashed before READY"``).
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
        """One line: who, what, where.

        Returns:
            e.g. ``"child 'w0' of group 'tp' (pid 4242) crashed before READY, with
            RuntimeError: boom, exit code 1, in phase 'load_model'"``.
        """
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
    """The spawn itself failed in the parent: bad target, unpicklable kwargs, fork error.

    Nothing of the child ran, so ``pid``, ``exitcode``, ``spawned_at`` and
    ``remote_traceback`` are None; the parent's exception is its ``__cause__``.

    Attributes:
        remote_type (str | None): The type name of the parent's exception (e.g.
            ``"PicklingError"``), or None.
        remote_message (str | None): That exception's message, or None.
        detail (str): What was being done when it failed (e.g. ``"its kwargs could not
            be pickled; nothing was started"``).
    """

    what = "could not be spawned"


class ChildCrashed(ChildFailed):
    """The child raised, or exited (with any code, 0 included), before READY.

    Also raised when its READY payload cannot be unpickled in the parent, or its
    control messages break the protocol before READY (said in ``detail``).

    Attributes:
        exitcode (int | None): Its exit code (negative: killed by that signal); None
            if it had not exited by the end of the teardown.
        remote_traceback (str | None): The traceback of the exception it raised, or
            None if it exited without reporting one.
        remote_type (str | None): That exception's type name, or None.
        remote_message (str | None): That exception's message, or None.
        phase (str | None): The last ``launch.phase()`` it reached, or None.
    """

    what = "crashed before READY"


class ReadyTimeout(ChildFailed):
    """READY did not come within the child's ``ready_timeout``.

    Attributes:
        phase (str | None): The last ``launch.phase()`` it reached (where it hung), or
            None.
        detail (str): The deadline, e.g. ``"ready_timeout=5.0s"``.
        exitcode (int | None): Its exit code after the teardown stopped it (negative:
            killed by that signal), or None.
    """

    what = "did not become READY in time"


class ChildDied(ChildFailed):
    """A child exited after READY while the group was running.

    Also raised when a READY child's control messages break the protocol (said in
    ``detail``).

    Attributes:
        exitcode (int | None): Its exit code (negative: killed by that signal), or
            None if it could not be known.
        remote_traceback (str | None): The traceback of the exception it reported, if
            it raised one; else None.
        phase (str | None): The last ``launch.phase()`` it reported, or None.
    """

    what = "died after READY"


class DeviceLockError(ChildFailed):
    """A stage could not lock its devices; nothing of it was spawned.

    Raised as itself when the lock directory or a lock file cannot be used (not a
    directory, no permission, no space, owned by another user, writable by others, a
    symbolic link, ...), and as its subclass :class:`DeviceLockTimeout` when a device
    stays held too long. ``name`` and ``group`` are the stage's name, ``path`` the
    directory or lock file at fault, ``device`` the device (``""`` when the directory
    is at fault) and ``reason`` what is wrong with ``path``.

    Its leaves reach the caller inside a :class:`LaunchFailed`, like any
    :class:`ChildFailed`.

    Attributes:
        name (str): The stage's name.
        group (str): The stage's name too.
        path (object): The directory or lock file at fault.
        device (str): The device whose lock failed; ``""`` when the directory is at
            fault.
        reason (str): What is wrong with ``path`` (``"timed out"`` for a
            :class:`DeviceLockTimeout`).
        failed_at (float): ``time.monotonic()`` when it failed.
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

    Attributes:
        name (str): The stage's name (``group`` too).
        device (str): The device it was waiting for.
        holder (int | None): The pid holding that device's lock; None if unknown.
        path (object): The lock file.
        reason (str): ``"timed out"``.
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
    are not in the group. Each child that survived SIGKILL (:class:`Unreaped`) is
    named in a note (``__notes__``).

    Attributes:
        message (str): ``"group 'name' failed: "`` (or ``"pipeline 'name' failed: "``)
            and the root cause's summary, with ``(+N more)`` when there are more.
        exceptions (tuple[ChildFailed, ...]): Every failure, earliest first.
    """

    def __new__(cls, message: str, exceptions: Sequence[ChildFailed]) -> LaunchFailed:
        return super().__new__(cls, message, exceptions)

    @property
    def first(self) -> ChildFailed:
        """The earliest failure by ``failed_at``.

        Returns:
            The :class:`ChildFailed` leaf (through nested groups) with the smallest
            ``failed_at``: the root cause.
        """
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


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside ``group`` (through nested groups of one), or None.

    launch's own tasks never raise, so what a task group of launch's raises is the
    caller's exception (or a KeyboardInterrupt, or a cancel), wrapped once per task group
    it crossed: it is handed back unwrapped, as if there were no task group.
    """
    inner: BaseException = group
    # Only the plain groups that task groups make: a LaunchFailed (an ExceptionGroup
    # too) from a nested launch is the caller's exception, whole.
    while type(inner) in (BaseExceptionGroup, ExceptionGroup):
        assert isinstance(inner, BaseExceptionGroup)
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner
