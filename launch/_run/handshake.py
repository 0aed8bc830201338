"""The handshake step of a child's run: send the boot frame, then wait for READY, the
child's exit (or its exception report) or its ``ready_timeout``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from .._errors import ChildCrashed, ChildFailed, ReadyTimeout
from .failure import failure

if TYPE_CHECKING:
    from .run import ChildRun

logger = logging.getLogger("launch")


async def handshake(run: ChildRun, boot: bytes) -> ChildFailed | None:
    """Boot ``run``'s started child and wait until it is settled.

    Returns:
        None once it is READY; else the failure to declare: a READY payload that does
        not unpickle here, the timeout, or its crash.
    """
    assert run.channel is not None
    logger.debug("%s/%s (pid %s): sending boot", run.group, run.name, run.pid)
    await run.channel.send_frame(boot)
    deadline = run.spec.ready_timeout
    with anyio.move_on_after(deadline if deadline is not None else float("inf")) as scope:
        await run.settled.wait()
    return _verdict(run, timed_out=scope.cancelled_caught)


def _verdict(run: ChildRun, *, timed_out: bool) -> ChildFailed | None:
    if run.ready:
        return None
    if run.payload_error is not None:
        bad = run.payload_error
        return failure(
            ChildCrashed,
            run,
            detail=f"its READY payload could not be unpickled in the parent: "
            f"{type(bad).__name__}: {bad}",
        )
    if timed_out:
        return failure(ReadyTimeout, run, detail=f"ready_timeout={run.spec.ready_timeout}s")
    # It exited, or reported its exception and is exiting. A process that takes long over
    # its interpreter shutdown (torch, vLLM) is not waited for: the teardown gives it
    # stop_timeout to exit, then fills in its exit code.
    return failure(ChildCrashed, run)
