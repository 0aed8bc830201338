"""Running a pipeline from the command line: live view, signals, summary, exit code.

::

    run ── task group                      (signal receiver open around all of it)
     ├─ signals: first SIGINT/SIGTERM cancels the pipeline scope; later ones are told
     │           that the (bounded) teardown is under way
     ├─ refresh: redraws the view every 0.1 s
     └─ pipeline scope: open_pipeline → startup table → stay up (or leave, for the demo)
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from .._errors import ChildFailed, LaunchFailed
from .._pipeline import Pipeline, running_pipeline
from .._pipeline_spec import PipelineSpec
from .._spec import ShutdownPolicy
from .view import (
    LIVE_COLUMNS,
    REFRESH_S,
    STARTUP_COLUMNS,
    View,
    figures_line,
    live_rows,
    startup_rows,
)

EXIT_OK = 0  # stopped on request (Ctrl-C, SIGTERM), or the demo finished
EXIT_USAGE = 2  # bad arguments or an invalid pipeline file; nothing was started
EXIT_STARTUP_FAILED = 3  # the pipeline never came up: a child crashed, timed out, ...
EXIT_CHILD_DIED = 4  # the pipeline was up, then a child died


@dataclass
class Outcome:
    """How a run ended."""

    pipeline: Pipeline
    up: bool = False
    signal: str | None = None
    error: LaunchFailed | None = None
    stopping_since: float | None = None
    stopped_at: float | None = None

    @property
    def exit_code(self) -> int:
        if self.error is None:
            return EXIT_OK
        return EXIT_CHILD_DIED if self.up else EXIT_STARTUP_FAILED


async def _watch_signals(
    signals: AsyncIterator[int],
    pipeline_scope: anyio.CancelScope,
    outcome: Outcome,
    view: View,
    budget: float,
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if outcome.signal is None:
            outcome.signal = name
            outcome.stopping_since = time.monotonic()
            view.message(f"{name}: stopping every child…", "bold")
            pipeline_scope.cancel()
        else:
            view.message(f"{name}: already stopping (teardown is bounded by {budget:.1f}s)")


async def _refresh(view: View, pipeline: Pipeline) -> None:
    while True:
        view.update(pipeline)
        await anyio.sleep(REFRESH_S)


def _teardown_budget(spec: PipelineSpec) -> float:
    default = spec.shutdown or ShutdownPolicy()
    return max((stage.shutdown or default).budget for stage in spec.stages)


async def run_pipeline(spec: PipelineSpec, view: View, *, stay_up: bool) -> Outcome:
    """Start ``spec``, show its startup, stay up until a signal (if ``stay_up``), stop it."""
    pipeline = Pipeline(spec)
    outcome = Outcome(pipeline)
    budget = _teardown_budget(spec)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            pipeline_scope = anyio.CancelScope()
            tg.start_soon(_watch_signals, signals, pipeline_scope, outcome, view, budget)
            tg.start_soon(_refresh, view, pipeline)
            with pipeline_scope:
                try:
                    async with running_pipeline(pipeline):
                        outcome.up = True
                        view.update(pipeline)
                        view.table(
                            f"startup of {spec.name!r} (times from its start)",
                            STARTUP_COLUMNS,
                            list(startup_rows(pipeline)),
                        )
                        view.message(figures_line(pipeline), "bold green")
                        if stay_up:
                            view.message("up: Ctrl-C or SIGTERM stops it")
                            await anyio.sleep_forever()
                        outcome.stopping_since = time.monotonic()
                except LaunchFailed as exc:
                    outcome.error = exc
            outcome.stopped_at = time.monotonic()
            view.update(pipeline)
            tg.cancel_scope.cancel()
    _summarize(pipeline, outcome, view)
    return outcome


def _summarize(pipeline: Pipeline, outcome: Outcome, view: View) -> None:
    view.table("summary", LIVE_COLUMNS, list(live_rows(pipeline, time.monotonic())))
    children = pipeline.children
    spawned = [c for c in children if c.pid is not None]
    teardown = ""
    if outcome.stopping_since is not None and outcome.stopped_at is not None:
        teardown = f" in {outcome.stopped_at - outcome.stopping_since:.2f}s"
    left = len(pipeline.unreaped)
    reaped = f"{len(spawned) - left} of {len(spawned)} children reaped{teardown}"
    if outcome.error is not None:
        first = outcome.error.first
        view.message(str(first), "red")
        for other in outcome.error.exceptions:
            if isinstance(other, ChildFailed) and other is not first:
                view.message(f"also: {other.summary()}", "red")
        what = "died while the pipeline was up" if outcome.up else "startup failed"
        view.message(f"{what} (exit {outcome.exit_code}); {reaped}", "bold red")
    elif outcome.signal is not None:
        when = "while up" if outcome.up else "during startup"
        view.message(f"stopped on {outcome.signal} {when}; {reaped}", "bold")
    else:
        view.message(f"stopped; {reaped}", "bold")
    for stuck in pipeline.unreaped:
        view.message(str(stuck), "red")
