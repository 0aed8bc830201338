"""Startup timelines: every child's timestamps as slices on one clock.

Children report ``time.monotonic()`` values, which on Linux is one clock for every
process (CLOCK_MONOTONIC), so the parent's and the children's timestamps line up. A
:class:`Timeline` is plain data: it is built from a live group or pipeline, exported to
a Chrome trace (``_trace.py``) or a Gantt chart (``_gantt.py``), and read back from a
saved trace.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._child import Child
    from ._group import Group
    from ._pipeline import Pipeline

# Slice kinds, in the order a child goes through them.
LOCK = "lock"  # waiting for the launch lock, or a stage's device locks
SPAWN = "spawn"  # the spawn itself, under the launch lock
BOOT = "boot"  # interpreter start until the bootstrap runs; then importing the target
PHASE = "phase"  # a launch.phase() of the child
SERVE = "serve"  # READY until a stop was requested
STOP = "stop"  # stop requested until the process exited
KINDS = (LOCK, SPAWN, BOOT, PHASE, SERVE, STOP)
MIN_LOCK_WAIT_S = 0.001  # a device-lock wait shorter than this gets no track of its own


@dataclass(frozen=True)
class Slice:
    """One interval of a track, in seconds from the timeline's origin.

    Attributes:
        name: what happened: a phase's name, ``"launch lock"``, ``"spawn"``, ...
        kind: one of ``"lock"``, ``"spawn"``, ``"boot"``, ``"phase"``, ``"serve"``,
            ``"stop"``.
        start: seconds from the origin.
        end: seconds from the origin.
    """

    name: str
    kind: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        """``end - start``, in seconds."""
        return self.end - self.start


@dataclass(frozen=True)
class Track:
    """One child (or a stage's device-lock wait): its slices, in time order.

    Attributes:
        group: the group's (or stage's) name.
        name: the child's name.
        pid: the child's pid, None if it was never spawned.
        slices: the intervals, in time order.
        ready: when it said READY, in seconds from the origin; None if it did not.
        exitcode: its exit code (negative: killed by that signal); None while running.
        is_child: False for a stage's device-lock track.
    """

    group: str
    name: str
    pid: int | None
    slices: tuple[Slice, ...]
    ready: float | None = None  # READY, from the origin
    exitcode: int | None = None
    is_child: bool = True  # False: a stage's device-lock track


@dataclass(frozen=True)
class Timeline:
    """The startup (and shutdown) of a group or pipeline as tracks of slices.

    ``group.timeline`` and ``pipeline.timeline`` build one; a snapshot taken inside the
    block ends its open slices at that moment.

    Attributes:
        name: the group's or pipeline's name.
        origin: the ``time.monotonic()`` value offsets count from: when the group or
            pipeline started.
        tracks: one per child, plus one per stage that waited for a device lock.
    """

    name: str
    origin: float
    tracks: tuple[Track, ...]

    @property
    def all_ready(self) -> float | None:
        """When the last child became READY (None if one never did)."""
        readies = [t.ready for t in self.children]
        if not readies or any(r is None for r in readies):
            return None
        return max(r for r in readies if r is not None)

    @property
    def children(self) -> tuple[Track, ...]:
        """The tracks of children (device-lock tracks left out)."""
        return tuple(t for t in self.tracks if t.is_child)

    def write_trace(self, path: str | Path) -> Path:
        """Write Chrome trace-event JSON (opens in Perfetto and chrome://tracing).

        Args:
            path: the file to write; its directory must exist.

        Returns:
            ``path``, as a :class:`~pathlib.Path`.

        Raises:
            OSError: the file cannot be written.
        """
        from ._trace import write_trace

        return write_trace(self, Path(path))

    def write_chart(self, path: str | Path, *, whole: bool = False) -> Path:
        """Write a Gantt chart: one bar per child, coloured by phase; needs matplotlib.

        Args:
            path: the file to write, ``.png``, ``.svg`` or ``.pdf`` (the suffix picks the
                format); its directory must exist.
            whole: show serving and stopping too, not only the startup.

        Returns:
            ``path``, as a :class:`~pathlib.Path`.

        Raises:
            ValueError: the suffix is not a chart format.
            RuntimeError: matplotlib is not installed (``launch-tree[plot]``).
            OSError: the file cannot be written.
        """
        from ._gantt import write_chart

        return write_chart(self, Path(path), whole=whole)

    @staticmethod
    def read_trace(path: str | Path) -> Timeline:
        """Read a trace written by :meth:`write_trace` back into a Timeline.

        Args:
            path: a trace file written by :meth:`write_trace` (or ``launch --trace``).

        Returns:
            The timeline it holds.

        Raises:
            ValueError: the file is missing, not JSON, or not a trace written by launch.
        """
        from ._trace import read_trace

        return read_trace(Path(path))


def _slices(marks: Iterable[tuple[str, str, float | None, float | None]]) -> list[Slice]:
    return [
        Slice(name, kind, start, end)
        for name, kind, start, end in marks
        if start is not None and end is not None and end >= start
    ]


def child_track(child: Child, origin: float, now: float) -> Track:
    """The slices of one child, offsets from ``origin``; open slices end at ``now``."""
    t = child.times

    def off(value: float | None) -> float | None:
        return None if value is None else value - origin

    requested = t.spawn_requested
    locked = None if requested is None else requested + t.lock_wait_s
    end_of_startup = t.ready if t.ready is not None else (t.exited or t.stop_requested or now)
    phase_marks: list[tuple[str, str, float | None, float | None]] = []
    for index, (name, start) in enumerate(t.phases):
        end = t.phases[index + 1][1] if index + 1 < len(t.phases) else end_of_startup
        phase_marks.append((name, PHASE, off(start), off(end)))
    first_phase = t.phases[0][1] if t.phases else end_of_startup
    stop_end = t.exited or now
    marks: list[tuple[str, str, float | None, float | None]] = [
        ("launch lock", LOCK, off(requested), off(locked)),
        ("spawn", SPAWN, off(locked), off(t.spawned)),
        ("interpreter start", BOOT, off(t.spawned), off(t.booted)),
        ("import target", BOOT, off(t.booted), off(first_phase)),
        *phase_marks,
        ("serving", SERVE, off(t.ready), off(t.stop_requested or t.exited or now)),
        ("stopping", STOP, off(t.stop_requested), off(stop_end)),
    ]
    slices = [s for s in _slices(marks) if not (s.kind == LOCK and s.duration <= 0)]
    return Track(child.group, child.name, child.pid, tuple(slices), off(t.ready), child.exitcode)


def group_timeline(group: Group, *, origin: float | None = None) -> Timeline:
    """A group's timeline; ``origin`` defaults to when the group started."""
    now = time.monotonic()
    start = origin if origin is not None else (group.started_at or now)
    tracks = tuple(child_track(child, start, now) for child in group.children)
    return Timeline(group.name, start, tracks)


def pipeline_timeline(pipeline: Pipeline) -> Timeline:
    """A pipeline's timeline: each stage's device-lock wait, then its children."""
    now = time.monotonic()
    origin = pipeline.started_at or now
    tracks: list[Track] = []
    for group in pipeline:
        wait = pipeline.device_lock_waits.get(group.name)
        if wait is not None and wait[1] - wait[0] >= MIN_LOCK_WAIT_S:
            lock = Slice("device lock", LOCK, wait[0] - origin, wait[1] - origin)
            tracks.append(Track(group.name, "device locks", None, (lock,), is_child=False))
        tracks.extend(child_track(child, origin, now) for child in group.children)
    for stats in pipeline.prefetches:
        if stats.skipped is None:
            end = (stats.finished_at or now) - origin
            read = Slice("prefetch", PHASE, stats.started_at - origin, end)
            tracks.append(Track("prefetch", stats.path, None, (read,), is_child=False))
    return Timeline(pipeline.name, origin, tuple(tracks))
