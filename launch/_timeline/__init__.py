"""Startup timelines: every child's timestamps as slices on one clock.

A layered package, each module importing only those above it in this list:

- ``model``: the slice kinds, :class:`Slice` and :class:`Track` (plain data);
- ``files``: output-path checks;
- ``trace`` and ``gantt``: the Chrome trace writer/reader and the Gantt chart writer,
  which read and write a timeline's parts (name, origin, tracks);
- ``timeline``: :class:`Timeline`, whose methods call the writers;
- ``build``: timelines from a live group or pipeline, read through public attributes.
"""

from .build import MIN_LOCK_WAIT_S, child_track, group_timeline, pipeline_timeline
from .model import BOOT, KINDS, LOCK, PHASE, SERVE, SPAWN, STOP, Slice, Track
from .timeline import Timeline

__all__ = [
    "BOOT",
    "KINDS",
    "LOCK",
    "MIN_LOCK_WAIT_S",
    "PHASE",
    "SERVE",
    "SPAWN",
    "STOP",
    "Slice",
    "Timeline",
    "Track",
    "child_track",
    "group_timeline",
    "pipeline_timeline",
]
