"""Timelines built from a live group or pipeline, read through public attributes only.

Children report ``time.monotonic()`` values, which on Linux is one clock for every
process (CLOCK_MONOTONIC), so the parent's and the children's timestamps line up. The
builders take anything shaped like a :class:`~launch.Child`, :class:`~launch.Group` or
:class:`~launch.Pipeline` (the protocols below), so this package never imports them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from .model import BOOT, LOCK, PHASE, SERVE, SPAWN, STOP, Slice, Track
from .timeline import Timeline

MIN_LOCK_WAIT_S = 0.001  # a device-lock wait shorter than this gets no track of its own


class ChildTimesLike(Protocol):
    """What a child's timeline is read from: :class:`~launch.ChildTimes`."""

    @property
    def spawn_requested(self) -> float | None: ...
    @property
    def lock_wait_s(self) -> float: ...
    @property
    def spawned(self) -> float | None: ...
    @property
    def booted(self) -> float | None: ...
    @property
    def phases(self) -> Sequence[tuple[str, float]]: ...
    @property
    def ready(self) -> float | None: ...
    @property
    def stop_requested(self) -> float | None: ...
    @property
    def exited(self) -> float | None: ...


class ChildLike(Protocol):
    """The public attributes of a :class:`~launch.Child` a track is built from."""

    @property
    def group(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def exitcode(self) -> int | None: ...
    @property
    def times(self) -> ChildTimesLike: ...


class GroupLike(Protocol):
    """The public attributes of a :class:`~launch.Group` a timeline is built from."""

    @property
    def name(self) -> str: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def children(self) -> Sequence[ChildLike]: ...


class PrefetchLike(Protocol):
    """The public attributes of a :class:`~launch.PrefetchStats`."""

    @property
    def path(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def finished_at(self) -> float | None: ...
    @property
    def skipped(self) -> str | None: ...


class PipelineLike(Protocol):
    """The public attributes of a :class:`~launch.Pipeline` a timeline is built from."""

    @property
    def name(self) -> str: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def device_lock_waits(self) -> dict[str, tuple[float, float]]: ...
    @property
    def prefetches(self) -> Sequence[PrefetchLike]: ...
    def __iter__(self) -> Iterator[GroupLike]: ...


def _slices(marks: Iterable[tuple[str, str, float | None, float | None]]) -> list[Slice]:
    return [
        Slice(name, kind, start, end)
        for name, kind, start, end in marks
        if start is not None and end is not None and end >= start
    ]


def child_track(child: ChildLike, origin: float, now: float) -> Track:
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


def group_timeline(group: GroupLike, *, origin: float | None = None) -> Timeline:
    """A group's timeline; ``origin`` defaults to when the group started."""
    now = time.monotonic()
    start = origin if origin is not None else (group.started_at or now)
    tracks = tuple(child_track(child, start, now) for child in group.children)
    return Timeline(group.name, start, tracks)


def pipeline_timeline(pipeline: PipelineLike) -> Timeline:
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
