"""What ``launch bench`` shows: progress while it runs, tables and claims after, a plot."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._config import format_size
from ._results import BenchResult, StartupCell
from ._run import Progress
from ._strategies import BASELINES, LAUNCH_STRATEGIES, PEERS

REFERENCE = "launch-trio"
GOAL_SINGLE = 1.15
GOAL_INIT = 1.10
GOAL_TEARDOWN_S = 0.5


class PlainProgress:
    """One line per finished step, on stderr."""

    def __init__(self) -> None:
        self._total = 0
        self._done = 0

    def begin(self, total: int) -> None:
        self._total = total

    def step(self, label: str) -> None:
        pass

    def done(self, label: str, outcome: str) -> None:
        self._done += 1
        print(f"[{self._done}/{self._total}] {label}: {outcome}", file=sys.stderr, flush=True)


class RichProgress:
    """A rich progress bar on stderr, redrawn between trials only (no refresh thread, so
    the parent's CPU figures are the strategies' own)."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._task: Any = None

    def begin(self, total: int) -> None:
        self._task = self._progress.add_task("starting", total=total)
        self._progress.refresh()

    def step(self, label: str) -> None:
        self._progress.update(self._task, description=label)
        self._progress.refresh()

    def done(self, label: str, outcome: str) -> None:
        if outcome.startswith("failed"):
            self._progress.console.print(f"[red]{label}: {outcome}[/red]")
        self._progress.advance(self._task)
        self._progress.refresh()


@contextmanager
def open_progress(plain: bool) -> Iterator[Progress]:
    """A rich bar when rich is installed and stderr is a terminal, else plain lines."""
    if not plain and sys.stderr.isatty():
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichBar
        except ImportError:
            pass
        else:
            bar = RichBar(
                TextColumn("{task.description:<40}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                auto_refresh=False,
                transient=True,
            )
            with bar:
                yield RichProgress(bar)
            return
    yield PlainProgress()


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


NOT_RUN = "not run"


def _missing(errors: Sequence[str]) -> str:
    """What a cell with no successful run shows: skipped, failed, or never reached."""
    if not errors:
        return NOT_RUN  # the run was interrupted before this cell
    return "skipped" if errors[0].startswith("skipped") else "failed"


def _cell_text(cell: StartupCell | None) -> str:
    if cell is None:
        return ""
    if cell.median is None:
        return _missing(cell.errors)
    low, high = cell.spread or (0.0, 0.0)
    text = f"{cell.median:.2f}"
    if len(cell.ready_s) > 1:
        text += f" ({low:.2f}-{high:.2f})"
    if cell.errors:
        text += f" [{len(cell.errors)} failed]"  # see notes()
    return text


def focus_n(result: BenchResult) -> int:
    """The N the ratios are given at: the configured one if measured, else the largest."""
    ns: list[int] = result.config["ns"]
    wanted: int = result.config.get("focus_n", 8)
    return wanted if wanted in ns else max(ns)


def series_of(result: BenchResult) -> list[int | None]:
    return list(dict.fromkeys(cell.payload for cell in result.startup))


def _series_title(result: BenchResult, payload: int | None) -> str:
    config = result.config
    if config["model"] != "synthetic":
        return f"model {config['model']}"
    return (
        f"synthetic: import {config['import_s']}s + init {config['init_s']}s "
        f"({config['work']}), payload {format_size(payload)}"
    )


def tables(result: BenchResult) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, in order."""
    config = result.config
    ns: list[int] = config["ns"]
    strategies: list[str] = config["strategies"]
    out = []
    runs = config["repeats"]
    for payload in series_of(result):
        title = f"all-READY seconds, median (min-max) of {runs} run(s): " + _series_title(
            result, payload
        )
        header = ["strategy", *(f"N={n}" for n in ns)]
        rows = [[s, *(_cell_text(result.cell(s, n, payload)) for n in ns)] for s in strategies]
        out.append((title, header, rows))
        n = focus_n(result)
        title = f"at N={n}: " + _series_title(result, payload)
        header = ["strategy", "all READY", "x 1 child"]
        synthetic = config["model"] == "synthetic"
        if synthetic:
            header.append("x init alone")
        header += [f"x {REFERENCE}", "starts done", "parent CPU", "peak RSS/child"]
        reference = result.cell(REFERENCE, n, payload)
        rows = []
        for strategy in strategies:
            cell = result.cell(strategy, n, payload)
            one = result.cell(strategy, 1, payload)
            if cell is None:
                continue
            median = cell.median
            row = [strategy, _s(median), _x(_ratio(median, one.median if one else None))]
            if synthetic:
                row.append(_x(_ratio(median, config["init_s"])))
            started = sorted(cell.started_s)[len(cell.started_s) // 2] if cell.started_s else None
            rss = cell.rss_median
            row += [
                _x(_ratio(median, reference.median if reference else None)),
                _s(started),
                "-" if cell.cpu_median is None else f"{cell.cpu_median:.3f}s",
                "-" if rss is None else f"{rss:.0f} MiB",
            ]
            rows.append(row)
        out.append((title, header, rows))
    if result.accelerators:
        n = result.accelerators[0].n
        title = f"accelerators at N={n}: all-READY seconds (parent preload: and the import)"
        header = ["trial", "variant", "median", "spread", "x first variant"]
        rows = []
        base: float | None = None
        previous = ""
        for acell in result.accelerators:
            trial, _, variant = acell.strategy.partition(": ")
            if trial != previous:
                base, previous = acell.median, trial
            spread = acell.spread
            rows.append(
                [
                    trial,
                    variant,
                    _s(acell.median) if acell.median is not None else _missing(acell.errors),
                    "-" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}",
                    _x(_ratio(acell.median, base)),
                ]
            )
        out.append((title, header, rows))
    if result.teardown:
        title = (
            "teardown: one child fails 0.5 s into init, its siblings still initialising; "
            "seconds from the failure"
        )
        header = ["policy", "N", "to all reaped", "spread", "to noticed", "left alive"]
        rows = []
        for tcell in result.teardown:
            spread = tcell.spread
            noticed = (
                sorted(tcell.noticed_s)[len(tcell.noticed_s) // 2] if tcell.noticed_s else None
            )
            rows.append(
                [
                    tcell.policy,
                    str(tcell.n),
                    _s(tcell.median) if tcell.median is not None else _missing(tcell.errors),
                    "-" if spread is None else f"{spread[0]:.2f}-{spread[1]:.2f}",
                    _s(noticed),
                    str(max(tcell.left)) if tcell.left else "-",
                ]
            )
        out.append((title, header, rows))
    return out


def claims(result: BenchResult) -> list[str]:
    """The figures issue 5 names, each stated with whether it holds here."""
    lines = []
    n = focus_n(result)
    config = result.config
    for payload in series_of(result):
        where = f" ({_series_title(result, payload)})"
        launch = result.cell(REFERENCE, n, payload)
        single = result.cell(REFERENCE, 1, payload)
        if launch and launch.median is not None:
            ratio = _ratio(launch.median, single.median if single else None)
            if ratio is not None:
                verdict = "holds" if ratio <= GOAL_SINGLE else "does not hold"
                lines.append(
                    f"{REFERENCE} at N={n} is {ratio:.2f}x one child "
                    f"(goal <= {GOAL_SINGLE}x): {verdict}{where}"
                )
            baselines = [
                (cell.median, name)
                for name in BASELINES
                if (cell := result.cell(name, n, payload)) is not None and cell.median is not None
            ]
            if baselines:
                best, name = min(baselines)
                ahead = launch.median < best
                lines.append(
                    f"{REFERENCE} at N={n}: {launch.median:.2f}s, best baseline {name} "
                    f"{best:.2f}s: {'ahead of every baseline' if ahead else 'NOT ahead'}{where}"
                )
        peers = [
            f"{name} {cell.median:.2f}s"
            for name in PEERS
            if (cell := result.cell(name, n, payload)) is not None and cell.median is not None
        ]
        if launch and launch.median is not None and peers:
            lines.append(
                f"{REFERENCE} at N={n}: {launch.median:.2f}s; the peers: {', '.join(peers)}{where}"
            )
        fork = result.cell("launch-forkserver", n, payload)
        if config["model"] == "synthetic" and fork and fork.median is not None:
            ratio = fork.median / config["init_s"] if config["init_s"] else None
            if ratio is not None:
                verdict = "holds" if ratio <= GOAL_INIT else "does not hold"
                lines.append(
                    f"launch-forkserver at N={n} is {ratio:.2f}x the init alone "
                    f"(goal <= {GOAL_INIT}x): {verdict}{where}"
                )
    for tcell in result.teardown:
        if tcell.median is None:
            continue
        if tcell.policy in LAUNCH_STRATEGIES:
            verdict = "holds" if tcell.median < GOAL_TEARDOWN_S else "does not hold"
            lines.append(
                f"teardown {tcell.policy}: {tcell.median:.2f}s from the failure to all reaped "
                f"(goal < {GOAL_TEARDOWN_S}s): {verdict}"
            )
        else:
            lines.append(f"teardown {tcell.policy}: {tcell.median:.2f}s")
    return lines


def notes(result: BenchResult) -> list[str]:
    """Every failed or skipped cell, one line each (repeats of a message folded)."""
    lines = []
    for cell in result.startup:
        for error in dict.fromkeys(cell.errors):
            size = f", payload {format_size(cell.payload)}" if cell.payload is not None else ""
            lines.append(f"{cell.strategy} N={cell.n}{size}: {error}")
    for tcell in result.teardown:
        for error in dict.fromkeys(tcell.errors):
            lines.append(f"teardown {tcell.policy} N={tcell.n}: {error}")
    for acell in result.accelerators:
        for error in dict.fromkeys(acell.errors):
            lines.append(f"{acell.strategy} N={acell.n}: {error}")
    return lines


def print_report(result: BenchResult, plain: bool) -> None:
    """Tables and claims on stdout (rich tables when available and not ``plain``)."""
    console = None
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            console = Console()
    for title, header, rows in tables(result):
        if console is not None:
            table = Table(title=title, title_justify="left")
            for index, name in enumerate(header):
                table.add_column(name, justify="left" if index == 0 else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
        else:
            print(title)
            print(_plain_table(header, rows))
            print()
    for line in notes(result):
        print(line)
    warm = result.forkserver_warm_s
    if warm is not None:
        print(f"launch's forkserver warmed (preload imported) in {warm:.2f}s, before the clock")
    if result.ray_init_s is not None:
        init_s = result.ray_init_s
        print(f"ray init (the local cluster, once per run) took {init_s:.2f}s, before the clock")
    for line in claims(result):
        print(line)
    took = duration(result.wall_s)
    if result.interrupted:
        print(f"bench interrupted after {took}; cells marked {NOT_RUN!r} were not reached")
    else:
        print(f"bench took {took}")


def duration(seconds: float) -> str:
    """``42.3s``, ``3m05s`` or ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def write_plot(result: BenchResult, path: Path) -> Path:
    """Startup vs N per strategy (one panel per series) and the teardown latencies."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError(
            "the bench plot needs matplotlib: pip install 'launch-tree[plot]'"
        ) from None
    series = series_of(result)
    panels = len(series) + (1 if result.teardown else 0)
    fig = Figure(figsize=(6.0 * panels, 4.6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ns: list[int] = result.config["ns"]
    for ax, payload in zip(axes, series, strict=False):
        for strategy in result.config["strategies"]:
            found = [result.cell(strategy, n, payload) for n in ns]
            points = [(n, c) for n, c in zip(ns, found, strict=True) if c and c.median is not None]
            if not points:
                continue
            xs = [n for n, _ in points]
            ys = [c.median for _, c in points]
            low = [c.median - c.spread[0] for _, c in points]  # type: ignore[index,operator]
            high = [c.spread[1] - c.median for _, c in points]  # type: ignore[index,operator]
            style = "-" if strategy in LAUNCH_STRATEGIES else ":" if strategy in PEERS else "--"
            ax.errorbar(xs, ys, yerr=[low, high], fmt=style + "o", ms=4, capsize=3, label=strategy)
        if result.config["model"] == "synthetic":
            ax.axhline(result.config["init_s"], color="grey", ls=":", lw=1, label="init alone")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("children (N)")
        ax.set_ylabel("all READY (s)")
        ax.set_title(_series_title(result, payload), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if result.teardown:
        ax = axes[-1]
        measured = [t for t in result.teardown if t.median is not None]
        ax.barh([t.policy for t in measured], [t.median or 0.0 for t in measured], color="#9e9e9e")
        for index, tcell in enumerate(measured):
            ax.annotate(
                f"{tcell.median:.2f}s",
                (tcell.median or 0.0, index),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        ax.set_xlabel("failure -> all reaped (s)")
        ax.set_title(f"teardown, N={result.teardown[0].n}", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    machine = result.machine
    fig.suptitle(
        f"launch bench: {machine.get('cpus')} CPUs, Python {machine.get('python')}, "
        f"{machine.get('gpus_visible', 0)} GPU(s)",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
