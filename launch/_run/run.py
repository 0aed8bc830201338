"""``ChildRun``: the one owner of a child's process, channel, output and state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from _launch_child._protocol import Failed, Stop

from .._channel import ControlChannel
from .._child import Child, ChildState, ChildTimes
from .._errors import ChildFailed
from .._output import OutputPump
from .._spec import ProcessSpec
from .._start.process import ProcessHandle
from .._start.spawn import Starter, start_child
from .handshake import handshake
from .start import start as start_step
from .supervise import supervise as supervise_step

logger = logging.getLogger("launch")

Declare = Callable[[ChildFailed], None]
"""How a run reports its child's failure to the group (which decides what it means)."""


class ChildRun:
    """Spawn → handshake → supervise → reap of one child, and its stop surface.

    The group runs :meth:`supervise` (first, shielded) and :meth:`start` as tasks, and
    hands the run to the teardown, whose stop ladder it implements (see
    ``launch._teardown.Stoppable``). Its failures go to ``declare``. Its attributes are
    read by :class:`~launch.Child` and written only by this package's step modules.

    Args:
        spec: What the child runs.
        group: The group's name.
        overlay: Parent-side env for the start (a pipeline stage's ``env``).
        declare: Called with each failure of the child, at once (no await between the
            moment it is known and the call).
        starter: The start step (:data:`~launch._start.spawn.Starter`): this machine's
            start methods by default.
    """

    def __init__(
        self,
        spec: ProcessSpec,
        group: str,
        *,
        declare: Declare,
        overlay: Mapping[str, str] | None = None,
        starter: Starter = start_child,
    ) -> None:
        self.spec = spec
        self.group = group
        self.declare = declare
        self.overlay = dict(overlay or {})
        self.starter = starter
        self.child = Child(self)
        # what the child is and said (read through self.child)
        self._state = ChildState.PENDING
        self.times = ChildTimes()
        self.phase: str | None = None
        self.exitcode: int | None = None
        self.payload: Any = None
        self.failed: Failed | None = None  # its exception report, times on our clock
        self.payload_error: BaseException | None = None
        # where it runs, and its parts once started
        self.node: object | None = None
        self.clock_offset = 0.0  # the child's clock minus ours
        self.process: ProcessHandle | None = None
        self.channel: ControlChannel | None = None
        self.output: OutputPump | None = None
        # its progress
        self.spawn_done = anyio.Event()  # started, or known never to start
        self.settled = anyio.Event()  # READY, its exception report, or exited
        self.exited = anyio.Event()
        self.eof = anyio.Event()
        self.watch_scope = anyio.CancelScope(shield=True)

    def __repr__(self) -> str:
        return f"<ChildRun {self.group}/{self.name} {self.state}>"

    # --- what it is ---

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def ready(self) -> bool:
        return self.times.ready is not None

    @property
    def exiting(self) -> bool:
        """It reported its exception before READY and is exiting by itself."""
        return self.failed is not None and not self.ready

    @property
    def has_exited(self) -> bool:
        return self.exited.is_set()

    @property
    def exit_note(self) -> str | None:
        """Why the exit code is None although the child has exited (its forkserver died,
        its node was lost): the process handle's own words."""
        return self.process.exit_unknown if self.process is not None else None

    @property
    def state(self) -> ChildState:
        return self._state

    @state.setter
    def state(self, new: ChildState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        extra = ""
        if new is ChildState.READY and self.times.startup_s is not None:
            extra = f" after {self.times.startup_s:.3f}s"
        elif new is ChildState.EXITED:
            note = self.exit_note
            extra = f" with exit code {self.exitcode}" if note is None else f", {note}"
        logger.info("%s/%s (pid %s): %s -> %s%s", self.group, self.name, self.pid, old, new, extra)

    # --- its life: the group's tasks ---

    async def start(self) -> None:
        """Start the child and wait for its READY, its exit or its ``ready_timeout``; a
        failure (spawn, crash, timeout) is declared."""
        boot = await start_step(self)
        if boot is None:
            return
        failure = await handshake(self, boot)
        if failure is not None:
            # Declared now, with no await before it: a cancel landing there would lose
            # this root cause, and the siblings' teardown starts now.
            self.declare(failure)

    async def supervise(self) -> None:
        """Own the process from spawn to reap, shielded; declare a death after READY."""
        await supervise_step(self)

    def startup_over(self) -> None:
        """No start is coming any more (the group's startup is over): a run that was
        never started is done."""
        self.spawn_done.set()

    # --- its stop: the teardown's stop ladder (launch._teardown.Stoppable) ---

    async def wait_exited(self) -> None:
        await self.exited.wait()

    def request_stop(self) -> bool:
        if self.channel is None or self.channel.closed:
            return False
        self._mark_stopping()
        logger.debug("%s/%s (pid %s): sending stop", self.group, self.name, self.pid)
        return self.channel.send_nowait(Stop())

    def send_signal(self, sig: int) -> None:
        if self.process is not None:
            self._mark_stopping()
            self.process.send_signal(sig)

    def kill_group(self) -> None:
        if self.process is not None:
            self.process.kill_group()

    def abandon(self) -> None:
        self.watch_scope.cancel()

    def _mark_stopping(self) -> None:
        if self.times.stop_requested is None:
            self.times.stop_requested = time.monotonic()
        if self.state in (ChildState.STARTING, ChildState.READY):
            self.state = ChildState.STOPPING
