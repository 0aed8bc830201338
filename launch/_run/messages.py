"""What a child says: its control socket read, and each typed message applied to its run.

Every time the child reports is on its host's clock; the run's ``clock_offset`` (that
clock minus ours: 0.0 on this machine) is subtracted before anything is stored, so a
child's times, and the root-cause order of failures, are on this process's clock.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from typing import TYPE_CHECKING, assert_never

from _launch_child._protocol import Booted, ChildMessage, Failed, Phase, Ready

from .._channel import ControlChannel, ProtocolError
from .._child import ChildState
from .._errors import ChildCrashed, ChildDied
from .failure import failure

if TYPE_CHECKING:
    from .run import ChildRun

logger = logging.getLogger("launch")

# What one child's messages may make the parent keep: a child that sends phases in a
# loop costs bounded memory (the latest phase always replaces the last kept one).
MAX_PHASES = 1000
MAX_PHASE_NAME = 200


async def read(run: ChildRun, channel: ControlChannel) -> None:
    """Apply each message of ``channel`` to ``run`` until EOF. What is not a valid
    message fails the child (unless it is failing already): nothing more of its stream
    can be trusted, and the teardown stops it (the socket stays open for the
    cooperative stop)."""
    try:
        while (message := await channel.receive()) is not None:
            apply(run, message)
    except ProtocolError as exc:
        if run.failed is None and run.payload_error is None:
            cls = ChildDied if run.ready else ChildCrashed
            run.declare(failure(cls, run, detail=f"protocol error: {exc}"))
    run.eof.set()


def apply(run: ChildRun, message: ChildMessage) -> None:
    """Record what ``message`` says about the child."""
    _log(run, message)
    offset = run.clock_offset
    match message:
        case Booted(at=at):
            run.times.booted = at - offset
        case Phase(name=name, at=at):
            _phase(run, name[:MAX_PHASE_NAME], at - offset)
        case Ready(payload=payload, at=at):
            _ready(run, payload, at - offset)
        case Failed(report=report):
            if offset:
                message = Failed(dataclasses.replace(report, at=report.at - offset))
            run.failed = message
            run.settled.set()  # failed before READY: the parent need not wait for the exit
        case _:
            assert_never(message)


def _phase(run: ChildRun, name: str, at: float) -> None:
    run.phase = name
    phases = run.times.phases
    if len(phases) >= MAX_PHASES:
        phases.pop()
    phases.append((name, at))


def _ready(run: ChildRun, payload: bytes, at: float) -> None:
    try:
        run.payload = pickle.loads(payload)
    except Exception as exc:  # e.g. the payload's class is not importable here
        run.payload_error = exc
    else:
        run.times.ready = at
        if run.state is ChildState.STARTING:
            run.state = ChildState.READY
    run.settled.set()


def _log(run: ChildRun, message: ChildMessage) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s/%s (pid %s) sent %s", run.group, run.name, run.pid, _shown(message))


def _shown(message: ChildMessage) -> str:
    """``message`` for the debug log, in the kind-and-fields form the log has always had."""
    match message:
        case Booted(at=at):
            return f"('booted', {at!r})"
        case Phase(name=name, at=at):
            return f"('phase', {name[:MAX_PHASE_NAME]!r}, {at!r})"
        case Ready(payload=payload):
            return f"ready ({len(payload)} bytes of payload)"
        case Failed(report=report):
            return f"('error', {report!r})"
        case _:
            assert_never(message)
