"""What the CLI shows of a running pipeline: a live table (rich), the startup table,
and the closing summary. Without rich, plain lines, one per state change."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from .._child import Child, ChildState

if TYPE_CHECKING:
    from .._pipeline import Pipeline

REFRESH_S = 0.1


def stage_status(pipeline: Pipeline, stage: str) -> str:
    """One word or phrase for where a stage is."""
    group = pipeline[stage]
    waiting = pipeline.waiting.get(stage)
    if waiting:
        return f"waiting ({waiting})"
    states = {child.state for child in group}
    if states == {ChildState.PENDING}:
        return "pending"
    if states == {ChildState.READY}:
        return "ready"
    if states <= {ChildState.EXITED, ChildState.STOPPING}:
        return "stopped" if ChildState.STOPPING not in states else "stopping"
    return "starting"


def startup_s(child: Child, now: float) -> float | None:
    """Seconds from spawn request to READY (a running clock while starting)."""
    times = child.times
    if times.spawn_requested is None:
        return None
    if times.ready is not None:
        return times.ready - times.spawn_requested
    if child.state is ChildState.STARTING:
        return now - times.spawn_requested
    return None


def _fmt(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f}s"


def _exit_text(child: Child) -> str:
    if child.exitcode is None:
        return ""
    if child.exitcode < 0:
        import signal

        try:
            return signal.Signals(-child.exitcode).name
        except ValueError:
            return f"signal {-child.exitcode}"
    return f"exit {child.exitcode}"


def live_rows(pipeline: Pipeline, now: float) -> Iterator[tuple[str, ...]]:
    """Rows of the live table: stage, child, pid, state, phase, startup, exit."""
    for stage in pipeline.spec.stages:
        devices = ",".join(str(d) for d in stage.devices)
        label = f"{stage.name} [{devices}]" if devices else stage.name
        yield (label, "", "", stage_status(pipeline, stage.name), "", "", "")
        for child in pipeline[stage.name]:
            yield (
                "",
                child.name,
                str(child.pid or ""),
                str(child.state),
                child.phase or "",
                _fmt(startup_s(child, now)),
                _exit_text(child),
            )


LIVE_COLUMNS = ("stage", "child", "pid", "state", "phase", "startup", "exit")


def phase_durations(child: Child) -> list[tuple[str, float]]:
    """Each phase and how long it lasted (until the next phase, READY, or exit)."""
    times = child.times
    marks = [*times.phases, ("", times.ready or times.exited or time.monotonic())]
    return [(name, marks[i + 1][1] - t) for i, (name, t) in enumerate(marks[:-1])]


def startup_rows(pipeline: Pipeline) -> Iterator[tuple[str, ...]]:
    """Rows of the startup table: stage, child, spawned and READY (offsets from the
    pipeline's start), own startup, and each phase with its duration."""
    t0 = pipeline.started_at

    def at(t: float | None) -> str:
        return "" if t is None else f"{t - t0:+.2f}s"

    for group in pipeline:
        for child in group:
            times = child.times
            yield (
                group.name,
                child.name,
                at(times.spawned),
                at(times.ready),
                _fmt(times.startup_s),
                ", ".join(f"{name} {dt:.2f}s" for name, dt in phase_durations(child)),
            )


STARTUP_COLUMNS = ("stage", "child", "spawned", "READY", "own startup", "phases")


def startup_figures(pipeline: Pipeline) -> tuple[float, float]:
    """(all-READY seconds from the pipeline's start, sum of children's own startups)."""
    readies = [c.times.ready for c in pipeline.children if c.times.ready is not None]
    own = [s for c in pipeline.children if (s := c.times.startup_s) is not None]
    all_ready = (max(readies) - pipeline.started_at) if readies else 0.0
    return all_ready, sum(own)


def figures_line(pipeline: Pipeline) -> str:
    """The demo's headline: all-READY time against the sum of the children's startups."""
    all_ready, total = startup_figures(pipeline)
    n = len(pipeline.children)
    line = f"all {n} children READY in {all_ready:.2f}s"
    spawns = [c.times.spawn_requested for c in pipeline.children if c.times.spawn_requested]
    first = min(spawns) - pipeline.started_at if spawns else 0.0
    if first > 0.1:  # a forkserver still importing its preload, or a device lock
        line += f" (first spawn at +{first:.2f}s)"
    line += f"; their own startup times add up to {total:.2f}s"
    if all_ready > 0 and total > all_ready:
        line += f" ({total / all_ready:.1f}x overlap)"
    return line


class View(Protocol):
    def update(self, pipeline: Pipeline) -> None: ...
    def message(self, text: str, style: str = "") -> None: ...
    def table(self, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None: ...


class PlainView:
    """No rich: print a line whenever a stage or child changes state or phase."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, ...]] = {}
        self._t0 = time.monotonic()

    def update(self, pipeline: Pipeline) -> None:
        for row in live_rows(pipeline, time.monotonic()):
            key = row[0] or row[1]
            state = (row[3], row[4], row[6])
            if self._seen.get(key) != state:
                self._seen[key] = state
                what = f"stage {row[0]}" if row[0] else f"  {row[1]} pid {row[2] or '-'}"
                extra = "".join(
                    f" {part}" for part in (row[4] and f"phase {row[4]}", row[6]) if part
                )
                print(f"[{time.monotonic() - self._t0:7.2f}s] {what}: {row[3]}{extra}", flush=True)

    def message(self, text: str, style: str = "") -> None:
        print(text, flush=True)

    def table(self, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print(title)
        for line in (columns, *rows):
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        sys.stdout.flush()


class RichView:
    """A rich live table, refreshed by the caller's task (``auto_refresh`` off: no thread)."""

    def __init__(self, live: Any, console: Any) -> None:
        self._live = live
        self.console = console

    def update(self, pipeline: Pipeline) -> None:
        self._live.update(self._render(pipeline), refresh=True)

    def _render(self, pipeline: Pipeline) -> Any:
        from rich.table import Table

        table = Table(title=f"pipeline {pipeline.name!r}", title_justify="left", expand=False)
        for column in LIVE_COLUMNS:
            table.add_column(column, no_wrap=True)
        styles = {"ready": "green", "starting": "yellow", "exited": "dim", "stopping": "magenta"}
        for row in live_rows(pipeline, time.monotonic()):
            style = "bold" if row[0] else styles.get(row[3], "")
            table.add_row(*row, style=style)
        return table

    def message(self, text: str, style: str = "") -> None:
        self.console.print(text, style=style or None, highlight=False, markup=False)

    def table(self, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        self.console.print(table)


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def open_view(plain: bool = False) -> Iterator[View]:
    """A rich live view when rich is installed (and ``plain`` is false), else plain lines."""
    if plain or not rich_available():
        yield PlainView()
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(console=console, auto_refresh=False, transient=True) as live:
        yield RichView(live, console)
