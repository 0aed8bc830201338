"""The supervise step of a child's run: from spawn to reap, shielded, so that a cancel
from outside never leaves a process without an owner.

It reads the child's messages and output while waiting for its exit (a pidfd, or the
forkserver's status pipe), gives its last messages and lines a moment to arrive, reaps
it (what is left of its process group is SIGKILLed first) and releases its fds.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from .._channel import ControlChannel
from .._child import ChildState
from .._errors import ChildDied
from .._start.process import ProcessHandle
from .failure import failure
from .messages import read

if TYPE_CHECKING:
    from .run import ChildRun

DRAIN_S = 0.5  # after a child exits, how long its last messages may take to arrive


async def supervise(run: ChildRun) -> None:
    """Own ``run``'s process until it is reaped (or abandoned by the teardown); a death
    after READY is declared."""
    with run.watch_scope:
        try:
            await run.spawn_done.wait()
            process, channel = run.process, run.channel
            if process is None or channel is None:
                return
            await _follow(run, process, channel)
            _reap(run, process)
        finally:
            _release(run)
    if run.state is ChildState.EXITED and run.ready:
        run.declare(failure(ChildDied, run))


async def _follow(run: ChildRun, process: ProcessHandle, channel: ControlChannel) -> None:
    """Read its messages and output until it exits, then until EOF, for at most DRAIN_S."""
    output = run.output
    async with anyio.create_task_group() as tg:
        tg.start_soon(read, run, channel)
        if output is not None:
            tg.start_soon(output.run)
        await process.wait_exited()
        with anyio.move_on_after(DRAIN_S):
            await run.eof.wait()
            if output is not None:
                await output.done.wait()
        tg.cancel_scope.cancel()


def _reap(run: ChildRun, process: ProcessHandle) -> None:
    run.exitcode = process.reap()
    run.times.exited = time.monotonic()
    run.state = ChildState.EXITED


def _release(run: ChildRun) -> None:
    """Close what the run holds (the process's fds only once it is reaped), and let
    whoever waits for the child go on."""
    if run.output is not None:
        run.output.finish()
    if run.channel is not None:
        run.channel.close()
    if run.process is not None and run.state is ChildState.EXITED:
        run.process.close()
    run.exited.set()
    run.settled.set()
