"""The timeline's data: slice kinds, :class:`Slice` and :class:`Track`.

Plain frozen dataclasses that import nothing of launch: the builders (``build.py``)
produce them, the writers (``trace.py``, ``gantt.py``) read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Slice kinds, in the order a child goes through them.
LOCK = "lock"  # waiting for the launch lock, or a stage's device locks
SPAWN = "spawn"  # the spawn itself, under the launch lock
BOOT = "boot"  # interpreter start until the bootstrap runs; then importing the target
PHASE = "phase"  # a launch.phase() of the child
SERVE = "serve"  # READY until a stop was requested
STOP = "stop"  # stop requested until the process exited
KINDS = (LOCK, SPAWN, BOOT, PHASE, SERVE, STOP)


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


def child_tracks(tracks: Iterable[Track]) -> tuple[Track, ...]:
    """The tracks of children, device-lock and prefetch tracks left out."""
    return tuple(t for t in tracks if t.is_child)


def all_ready(tracks: Iterable[Track]) -> float | None:
    """When the last child of ``tracks`` became READY; None if one never did (or there
    are no children)."""
    readies = [t.ready for t in child_tracks(tracks)]
    if not readies or any(r is None for r in readies):
        return None
    return max(r for r in readies if r is not None)
