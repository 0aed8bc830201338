"""The start step of a child's run: build its boot frame, start it (one call to the
run's starter), and adopt what the start hands back."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._channel import ControlChannel
from .._child import ChildState
from .._errors import SpawnFailed
from .._output import OutputPump
from .._start.spawn import Spawned, build_boot

if TYPE_CHECKING:
    from .run import ChildRun


async def start(run: ChildRun) -> bytes | None:
    """Start ``run``'s child; its encoded boot frame, or None if nothing was started
    (the :class:`SpawnFailed` is declared)."""
    try:
        boot = build_boot(run.spec, run.group, run.overlay)
        requested = time.monotonic()
        spawned = await run.starter(run.spec, run.group, run.overlay)
        # No await between the start's return and this: a cancel arriving during the
        # start still finds the process, to tear it down.
        adopt(run, spawned, requested)
    except SpawnFailed as exc:
        run.declare(exc)
        return None
    finally:
        run.spawn_done.set()
    return boot


def adopt(run: ChildRun, spawned: Spawned, requested: float) -> None:
    """Make ``spawned`` the run's: its process, control channel, output and times."""
    run.process = spawned.process
    run.channel = ControlChannel(spawned.sock)
    if spawned.output_fds is not None:
        run.output = OutputPump(spawned.output_fds, f"{run.group}/{run.name}")
    run.node = spawned.node
    run.clock_offset = spawned.clock_offset
    times = run.times
    times.spawn_requested = spawned.requested_at if spawned.requested_at is not None else requested
    times.spawned = spawned.spawned_at
    times.lock_wait_s = spawned.lock_wait_s
    run.state = ChildState.STARTING
