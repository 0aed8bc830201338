"""The :class:`Timeline`: tracks of slices, with its trace and chart writers as methods.

It sits above the model and the writers: ``trace.py`` and ``gantt.py`` read and write
a timeline's parts (name, origin, tracks) and never import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import gantt, trace
from .model import Track, all_ready, child_tracks


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
        return all_ready(self.tracks)

    @property
    def children(self) -> tuple[Track, ...]:
        """The tracks of children (device-lock tracks left out)."""
        return child_tracks(self.tracks)

    def write_trace(self, path: str | Path) -> Path:
        """Write Chrome trace-event JSON (opens in Perfetto and chrome://tracing).

        Args:
            path: the file to write; its directory must exist.

        Returns:
            ``path``, as a :class:`~pathlib.Path`.

        Raises:
            OSError: the file cannot be written.
        """
        return trace.write_trace(self.name, self.origin, self.tracks, Path(path))

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
        return gantt.write_chart(self.name, self.tracks, Path(path), whole=whole)

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
        name, origin, tracks = trace.read_trace(Path(path))
        return Timeline(name, origin, tracks)
