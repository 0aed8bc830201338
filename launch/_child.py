"""The public, read-only view of one child (:class:`Child`), and its state and times.

Everything a :class:`Child` shows is kept by the child's run (``launch._run``), which
alone changes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._output import OutputPump
    from ._run import ChildRun
    from ._spec import ProcessSpec


class ChildState(enum.Enum):
    """Where a child is in its life.

    It moves forward only: PENDING → STARTING → READY → STOPPING → EXITED, skipping
    what does not apply (a child that crashes before READY goes from STARTING to
    EXITED). ``str(state)`` is its value, e.g. ``"ready"``.
    """

    #: Not spawned yet.
    PENDING = "pending"
    #: Spawned; READY not received yet.
    STARTING = "starting"
    #: READY received; the child is running.
    READY = "ready"
    #: The teardown asked it to stop (cooperative stop or a signal).
    STOPPING = "stopping"
    #: Gone and reaped (its exit code is in :attr:`Child.exitcode`).
    EXITED = "exited"

    def __str__(self) -> str:
        return self.value


@dataclass
class ChildTimes:
    """Timestamps of one child on this process's ``time.monotonic()`` clock (system-wide
    on Linux; what a child on another host reports is shifted by that host's offset).

    Each is None until that moment has come (a child that never got there keeps None).

    Attributes:
        spawn_requested (float | None): When the group asked for the spawn (after
            waiting for launch's forkserver, for a forkserver child).
        spawned (float | None): When the process had been created.
        lock_wait_s (float): Seconds the spawn waited for launch's launch lock.
        booted (float | None): When the child's bootstrap got its boot message, before
            it applied ``env`` and imported its target.
        phases (list[tuple[str, float]]): Each ``launch.phase(name)`` the child
            reported, as ``(name, time)``, in order (at most 1000: past that, the
            latest replaces the last one kept).
        ready (float | None): When the child called ``launch.ready()``.
        stop_requested (float | None): When the teardown first asked it to stop.
        exited (float | None): When the parent saw it exit and reaped it.
    """

    spawn_requested: float | None = None
    spawned: float | None = None
    lock_wait_s: float = 0.0
    booted: float | None = None
    phases: list[tuple[str, float]] = field(default_factory=list)
    ready: float | None = None
    stop_requested: float | None = None
    exited: float | None = None

    @property
    def startup_s(self) -> float | None:
        """Seconds from spawn request to READY.

        Returns:
            ``ready - spawn_requested``, or None while either is unknown.
        """
        if self.spawn_requested is None or self.ready is None:
            return None
        return self.ready - self.spawn_requested


class Child:
    """One launched process: a read-only view, kept current by its group.

    Made by the group (one per :class:`ProcessSpec`), not by hand; read it from
    ``group["name"]`` or ``group.children``.
    """

    def __init__(self, run: ChildRun) -> None:
        self._run = run

    @property
    def spec(self) -> ProcessSpec:
        """What the child runs."""
        return self._run.spec

    @property
    def group(self) -> str:
        """The name of its group (its stage, in a pipeline)."""
        return self._run.group

    @property
    def name(self) -> str:
        """The spec's name."""
        return self._run.spec.name

    @property
    def state(self) -> ChildState:
        """Where the child is in its life."""
        return self._run.state

    @property
    def times(self) -> ChildTimes:
        """Its timestamps, from spawn request to exit, on this process's clock."""
        return self._run.times

    @property
    def phase(self) -> str | None:
        """The last phase it reported with ``launch.phase()``, or None."""
        return self._run.phase

    @property
    def exitcode(self) -> int | None:
        """Its exit code once reaped (negative: killed by that signal); None while it
        runs, or if it was never spawned or its exit status could not be known (its
        forkserver died)."""
        return self._run.exitcode

    @property
    def pid(self) -> int | None:
        """The process id, once spawned."""
        return self._run.pid

    @property
    def node(self) -> object | None:
        """Where the child runs: None on this machine; a placement backend's node
        object otherwise."""
        return self._run.node

    @property
    def output_tail(self) -> list[str]:
        """The last lines the child wrote (``output="prefix"`` only; else empty)."""
        output = self._run.output
        return list(output.tail) if output is not None else []

    @property
    def ready(self) -> bool:
        """True once READY has been received (stays true after the child exits)."""
        return self._run.ready

    @property
    def exiting(self) -> bool:
        """True once the child has reported its exception before READY; it is exiting by
        itself, and the teardown gives it ``stop_timeout`` to, keeping its exit code."""
        return self._run.exiting

    @property
    def payload(self) -> Any:
        """What the child passed to ``launch.ready(...)``.

        Returns:
            The payload, unpickled in the parent (None if ``ready()`` was called
            without one).

        Raises:
            RuntimeError: The child is not READY (yet).
        """
        if not self.ready:
            raise RuntimeError(f"child {self.name!r} is not READY (state {self.state})")
        return self._run.payload

    @property
    def has_exited(self) -> bool:
        """True once the process is gone (or was never spawned)."""
        return self._run.has_exited

    async def wait_exited(self) -> None:
        """Wait until the process is gone and reaped (or is known never to start)."""
        await self._run.wait_exited()

    @property
    def _output(self) -> OutputPump | None:
        # The output pump, for tests that read its counters.
        return self._run.output

    def __repr__(self) -> str:
        return f"<Child {self.name!r} pid={self.pid} state={self.state} exitcode={self.exitcode}>"
