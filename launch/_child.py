"""The live handle of one child: what the parent knows about it, and its runtime parts."""

from __future__ import annotations

import enum
import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import anyio

from _launch_child._protocol import ErrorReport

from ._channel import ControlChannel
from ._output import OutputPump
from ._spec import ProcessSpec
from ._start.process import ForkserverProcess, ProcessHandle

logger = logging.getLogger("launch")

# What one child's messages may make the parent keep: a child that sends phases in a
# loop costs bounded memory (the latest phase always replaces the last kept one).
_MAX_PHASES = 1000
_MAX_PHASE_NAME = 200


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
    """Timestamps of one child on the system-wide ``time.monotonic()`` clock.

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
    """One launched process. Attributes are read-only views kept current by the group.

    Made by the group (one per :class:`ProcessSpec`), not by hand; read it from
    ``group["name"]`` or ``group.children``.

    Attributes:
        spec (ProcessSpec): What the child runs.
        group (str): The name of its group (its stage, in a pipeline).
        times (ChildTimes): Its timestamps, from spawn request to exit.
        phase (str | None): The last phase it reported with ``launch.phase()``, or None.
        exitcode (int | None): Its exit code once reaped (negative: killed by that
            signal); None while it runs, or if it was never spawned or its exit status
            could not be known (its forkserver died).
    """

    def __init__(self, spec: ProcessSpec, group: str) -> None:
        self.spec = spec
        self.group = group
        self._state = ChildState.PENDING
        self.times = ChildTimes()
        self.phase: str | None = None
        self.exitcode: int | None = None
        self._payload: Any = None
        # runtime parts, owned by the group's task tree
        self._process: ProcessHandle | None = None
        self._channel: ControlChannel | None = None
        self._output: OutputPump | None = None
        self._error: ErrorReport | None = None
        self._payload_error: BaseException | None = None
        self._spawn_done = anyio.Event()
        self._settled = anyio.Event()  # READY, or exited
        self._exited = anyio.Event()
        self._eof = anyio.Event()
        self._watch_scope = anyio.CancelScope(shield=True)

    @property
    def name(self) -> str:
        """The spec's name."""
        return self.spec.name

    @property
    def state(self) -> ChildState:
        """Where the child is in its life."""
        return self._state

    @state.setter
    def state(self, new: ChildState) -> None:
        old, self._state = self._state, new
        if old is not new:
            extra = ""
            if new is ChildState.READY and self.times.startup_s is not None:
                extra = f" after {self.times.startup_s:.3f}s"
            elif new is ChildState.EXITED:
                note = self._exit_note
                extra = f" with exit code {self.exitcode}" if note is None else f", {note}"
            logger.info(
                "%s/%s (pid %s): %s -> %s%s", self.group, self.name, self.pid, old, new, extra
            )

    @property
    def pid(self) -> int | None:
        """The process id, once spawned."""
        return self._process.pid if self._process is not None else None

    @property
    def output_tail(self) -> list[str]:
        """The last lines the child wrote (``output="prefix"`` only; else empty)."""
        return list(self._output.tail) if self._output is not None else []

    @property
    def ready(self) -> bool:
        """True once READY has been received (stays true after the child exits)."""
        return self.times.ready is not None

    @property
    def exiting(self) -> bool:
        """True once the child has reported its exception before READY; it is exiting by
        itself, and the teardown gives it ``stop_timeout`` to, keeping its exit code."""
        return self._error is not None and not self.ready

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
        return self._payload

    def __repr__(self) -> str:
        return f"<Child {self.name!r} pid={self.pid} state={self.state} exitcode={self.exitcode}>"

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if logger.isEnabledFor(logging.DEBUG):
            shown = f"ready ({len(message[1])} bytes of payload)" if kind == "ready" else message
            logger.debug("%s/%s (pid %s) sent %s", self.group, self.name, self.pid, shown)
        if kind == "booted":
            self.times.booted = message[1]
        elif kind == "phase":
            name = message[1][:_MAX_PHASE_NAME]
            self.phase = name
            if len(self.times.phases) >= _MAX_PHASES:
                self.times.phases.pop()
            self.times.phases.append((name, message[2]))
        elif kind == "ready":
            try:
                self._payload = pickle.loads(message[1])
            except Exception as exc:  # e.g. the payload's class is not importable here
                self._payload_error = exc
            else:
                self.times.ready = message[2]
                if self.state is ChildState.STARTING:
                    self.state = ChildState.READY
            self._settled.set()
        elif kind == "error":
            self._error = message[1]
            self._settled.set()  # failed before READY: the parent need not wait for the exit

    @property
    def _exit_note(self) -> str | None:
        """Why the exit code is None although the child has exited (its forkserver died)."""
        process = self._process
        return process.exit_unknown if isinstance(process, ForkserverProcess) else None

    # --- what teardown needs (see launch._teardown.Stoppable) ---

    @property
    def has_exited(self) -> bool:
        """True once the process is gone (or was never spawned)."""
        return self._exited.is_set()

    async def wait_exited(self) -> None:
        await self._exited.wait()

    def request_stop(self) -> bool:
        if self._channel is None or self._channel.closed:
            return False
        self._mark_stopping()
        logger.debug("%s/%s (pid %s): sending stop", self.group, self.name, self.pid)
        return self._channel.send_nowait(("stop",))

    def send_signal(self, sig: int) -> None:
        if self._process is not None:
            self._mark_stopping()
            self._process.send_signal(sig)

    def kill_group(self) -> None:
        if self._process is not None:
            self._process.kill_group()

    def abandon(self) -> None:
        self._watch_scope.cancel()

    def _mark_stopping(self) -> None:
        if self.times.stop_requested is None:
            self.times.stop_requested = time.monotonic()
        if self.state in (ChildState.STARTING, ChildState.READY):
            self.state = ChildState.STOPPING
