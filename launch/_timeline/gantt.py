"""Timelines as Gantt charts (matplotlib): one bar per child, coloured by phase.

Drawn on a ``matplotlib.figure.Figure`` with no pyplot, so nothing process-global (the
backend, the current figure) changes in the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import output_problem
from .model import BOOT, LOCK, PHASE, SERVE, SPAWN, STOP, Track, all_ready

FIXED = {
    LOCK: ("#9e9e9e", "//"),
    SPAWN: ("#212121", ""),
    BOOT: ("#cfd8dc", ""),
    SERVE: ("#e8f5e9", ""),
    STOP: ("#ef9a9a", ""),
}
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#d62728",
    "#7f7f7f",
)
MATPLOTLIB_MISSING = "writing a chart needs matplotlib: pip install 'launch-tree[plot]'"
CHART_FORMATS = (".png", ".svg", ".pdf")


def chart_problem(path: Path) -> str | None:
    """Why a chart cannot be written at ``path`` (format, matplotlib, directory), or None.

    Cheap: matplotlib is looked for, not imported.
    """
    import importlib.util

    if path.suffix.lower() not in CHART_FORMATS:
        shown = repr(path.suffix) if path.suffix else "no suffix"
        return f"unsupported chart format ({shown}); use {', '.join(CHART_FORMATS)}"
    if importlib.util.find_spec("matplotlib") is None:
        return MATPLOTLIB_MISSING
    return output_problem(path)


def write_chart(name: str, tracks: Sequence[Track], path: Path, *, whole: bool = False) -> Path:
    """Draw the timeline ``name`` of ``tracks`` into ``path`` (format from its suffix:
    .png, .svg, .pdf).

    By default the x axis covers startup (to the last READY, plus a margin): that is
    where the chart answers "what made startup slow". ``whole=True`` shows serving and
    stopping too. The directory must exist.

    Raises:
        ValueError: the suffix is not one of ``CHART_FORMATS``.
        RuntimeError: matplotlib is not installed.
    """
    if path.suffix.lower() not in CHART_FORMATS:
        raise ValueError(
            f"{path}: unsupported chart format {path.suffix!r}; use {', '.join(CHART_FORMATS)}"
        )
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise RuntimeError(MATPLOTLIB_MISSING) from None

    tracks = list(tracks)
    phase_colours: dict[str, str] = {}
    for track in tracks:
        for piece in track.slices:
            if piece.kind == PHASE and piece.name not in phase_colours:
                phase_colours[piece.name] = PALETTE[len(phase_colours) % len(PALETTE)]

    ends = [p.end for t in tracks for p in t.slices if whole or p.kind not in (SERVE, STOP)]
    last_ready = all_ready(tracks)
    right = max([*ends, last_ready or 0.0, 0.001]) * 1.08

    fig = Figure(figsize=(10, 1.2 + 0.42 * max(1, len(tracks))), layout="constrained")
    ax: Any = fig.add_subplot()
    labels = []
    for row, track in enumerate(tracks):
        labels.append(f"{track.group} / {track.name}")
        for piece in track.slices:
            if piece.start >= right or (piece.kind == STOP and not whole):
                continue
            colour, hatch = FIXED.get(piece.kind, (phase_colours.get(piece.name, "#000"), ""))
            ax.barh(
                row,
                min(piece.end, right) - piece.start,
                left=piece.start,
                height=0.6,
                color=colour,
                hatch=hatch,
                edgecolor="white" if not hatch else "#616161",
                linewidth=0.5,
            )
        if track.ready is not None and track.ready <= right:
            ax.plot([track.ready], [row], marker="|", color="#1b5e20", markersize=14)
    if last_ready is not None:
        ax.axvline(last_ready, color="#1b5e20", linestyle="--", linewidth=1)
        ax.annotate(
            f"all READY {last_ready:.2f}s",
            (last_ready, -0.75),
            color="#1b5e20",
            fontsize=8,
            ha="right",
            va="bottom",
        )
    ax.set_yticks(range(len(tracks)), labels, fontsize=8)
    ax.set_ylim(len(tracks) - 0.4, -1.1)
    ax.set_xlim(0, right)
    ax.set_xlabel("seconds from start")
    ax.grid(axis="x", color="#eeeeee")
    ax.set_axisbelow(True)
    ax.set_title(f"startup of {name!r}", loc="left", fontsize=10)
    legend = [
        Patch(facecolor=FIXED[LOCK][0], hatch="//", edgecolor="#616161", label="lock wait"),
        Patch(facecolor=FIXED[SPAWN][0], label="spawn"),
        Patch(facecolor=FIXED[BOOT][0], label="interpreter / import target"),
        *(Patch(facecolor=c, label=phase) for phase, c in phase_colours.items()),
        Patch(facecolor=FIXED[SERVE][0], label="READY, serving"),
    ]
    if whole:
        legend.append(Patch(facecolor=FIXED[STOP][0], label="stopping"))
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.savefig(path, dpi=120)
    return path
