"""Stopping children: cooperative stop → SIGTERM → SIGKILL to the group, all concurrently.

Runs shielded from outside cancellation, bounded by ``ShutdownPolicy.budget``, with Ctrl-C
held back until it is done (``_signals``). A process that survives SIGKILL (uninterruptible
sleep, state D) is reported, never waited on.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import anyio

from ._signals import sigint_deferred
from ._spec import ShutdownPolicy
from ._start.process import process_state

logger = logging.getLogger("launch")


@dataclass(frozen=True)
class Unreaped:
    """A child that did not exit even after SIGKILL and ``kill_timeout``.

    Such a process (typically in uninterruptible sleep) is reported, not waited on:
    it is listed in ``Group.unreaped`` / ``Pipeline.unreaped`` and, when the group or
    pipeline fails, named in a note of its :class:`LaunchFailed`. ``str(u)`` reads
    ``"child 'w0' (pid 4242, state D) survived SIGKILL"``.

    Attributes:
        name (str): The child's name.
        pid (int): Its process id.
        state (str): The kernel's state letter for it, e.g. ``"D"`` (uninterruptible
            sleep).
    """

    name: str
    pid: int
    state: str  # the kernel's state letter, e.g. 'D' (uninterruptible sleep)

    def __str__(self) -> str:
        return f"child {self.name!r} (pid {self.pid}, state {self.state}) survived SIGKILL"


class Stoppable(Protocol):
    """What teardown needs of a child: its run (``launch._run.ChildRun``) provides it."""

    @property
    def name(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def ready(self) -> bool: ...
    @property
    def exiting(self) -> bool: ...
    @property
    def has_exited(self) -> bool: ...

    async def wait_exited(self) -> None: ...
    def request_stop(self) -> bool: ...
    def send_signal(self, sig: int) -> None: ...
    def kill_group(self) -> None: ...
    def abandon(self) -> None: ...


async def _wait(child: Stoppable, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        await child.wait_exited()
    return child.has_exited


async def stop_child(child: Stoppable, policy: ShutdownPolicy, unreaped: list[Unreaped]) -> None:
    """Take one child through the stop ladder."""
    if child.has_exited:
        return
    if child.exiting:  # it reported its own failure and is on its way out: let it finish
        if await _wait(child, policy.stop_timeout):
            return
    elif child.ready and child.request_stop():
        if await _wait(child, policy.stop_timeout):
            return
        logger.info(
            "child %r ignored the stop request for %.1fs: SIGTERM", child.name, policy.stop_timeout
        )
    child.send_signal(signal.SIGTERM)
    if await _wait(child, policy.term_timeout):
        return
    logger.warning(
        "child %r ignored SIGTERM for %.1fs: SIGKILL to its group", child.name, policy.term_timeout
    )
    child.kill_group()
    if await _wait(child, policy.kill_timeout):
        return
    pid = child.pid if child.pid is not None else -1
    found = Unreaped(child.name, pid, process_state(pid))
    logger.error("%s; not waiting for it any longer", found)
    unreaped.append(found)
    child.abandon()


async def teardown(children: Iterable[Stoppable], policy: ShutdownPolicy) -> list[Unreaped]:
    """Stop every live child concurrently; return those that could not be reaped."""
    unreaped: list[Unreaped] = []
    started = time.monotonic()
    with sigint_deferred(), anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tg:
            for child in children:
                if not child.has_exited:
                    tg.start_soon(stop_child, child, policy, unreaped)
    logger.debug("teardown took %.3fs", time.monotonic() - started)
    return unreaped
