"""Timelines as Chrome trace-event JSON: opens in https://ui.perfetto.dev and
chrome://tracing.

One process per stage (or group), one thread per child, named ``child (pid N)``. Each
child has a ``startup`` slice from its spawn request to READY with the launch-lock wait,
the spawn, the interpreter start, the target import and every ``launch.phase`` nested
inside it, then ``serving`` and ``stopping``; READY is an instant event. A stage's
device-lock wait is a thread of its own. ``otherData.launch`` keeps what
:func:`read_trace` needs to rebuild the timeline.

Reads and writes the parts of a timeline (name, origin, tracks); ``Timeline`` (in
``timeline.py``, above this module) assembles them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .model import Slice, Track

FORMAT = "launch-timeline/1"
_US = 1e6


class TraceContents(NamedTuple):
    """What a trace holds: the parts of a timeline."""

    name: str
    origin: float
    tracks: tuple[Track, ...]


def to_trace_events(name: str, origin: float, tracks: Sequence[Track]) -> dict[str, Any]:
    """The trace-event JSON object of a timeline's parts."""
    events: list[dict[str, Any]] = []
    groups: dict[str, int] = {}
    tracks_meta: list[dict[str, Any]] = []
    for index, track in enumerate(tracks):
        if track.group not in groups:
            groups[track.group] = len(groups) + 1
            pid = groups[track.group]
            events.append(_meta("process_name", pid, None, {"name": f"stage {track.group}"}))
            events.append(_meta("process_sort_index", pid, None, {"sort_index": pid}))
        pid = groups[track.group]
        tid = track.pid if track.pid is not None else index + 1
        label = f"{track.name} (pid {track.pid})" if track.pid is not None else track.name
        events.append(_meta("thread_name", pid, tid, {"name": label}))
        events.append(_meta("thread_sort_index", pid, tid, {"sort_index": index}))
        tracks_meta.append(
            {
                "group": track.group,
                "name": track.name,
                "pid": track.pid,
                "ready": track.ready,
                "exitcode": track.exitcode,
                "is_child": track.is_child,
                "trace_pid": pid,
                "trace_tid": tid,
            }
        )
        if track.is_child and track.slices and track.ready is not None:
            start = track.slices[0].start
            events.append(_slice("startup", "startup", start, track.ready, pid, tid))
        for piece in track.slices:
            events.append(_slice(piece.name, piece.kind, piece.start, piece.end, pid, tid))
        if track.ready is not None:
            events.append(
                {
                    "name": "READY",
                    "ph": "i",
                    "s": "t",
                    "ts": track.ready * _US,
                    "pid": pid,
                    "tid": tid,
                }
            )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "launch": {
                "format": FORMAT,
                "name": name,
                "origin": origin,
                "tracks": tracks_meta,
            }
        },
    }


def _meta(name: str, pid: int, tid: int | None, args: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {"name": name, "ph": "M", "pid": pid, "args": args}
    if tid is not None:
        event["tid"] = tid
    return event


def _slice(name: str, kind: str, start: float, end: float, pid: int, tid: int) -> dict[str, Any]:
    return {
        "name": name,
        "cat": kind,
        "ph": "X",
        "ts": start * _US,
        "dur": max(0.0, end - start) * _US,
        "pid": pid,
        "tid": tid,
    }


def write_trace(name: str, origin: float, tracks: Sequence[Track], path: Path) -> Path:
    """Write a timeline's parts to ``path`` as trace-event JSON (its directory must exist)."""
    events = to_trace_events(name, origin, tracks)
    path.write_text(json.dumps(events, indent=1) + "\n", encoding="utf-8")
    return path


def read_trace(path: Path) -> TraceContents:
    """The parts of the timeline in a trace written by :func:`write_trace`.

    Raises ``ValueError`` naming the file if it is not such a trace.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON trace: {exc}") from None
    meta = data.get("otherData", {}).get("launch") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a trace written by launch (no otherData.launch)")
    slices: dict[tuple[int, int], list[Slice]] = {}
    for event in data.get("traceEvents", []):
        if event.get("ph") == "X" and event.get("cat") != "startup":
            start = event["ts"] / _US
            piece = Slice(event["name"], event["cat"], start, start + event["dur"] / _US)
            slices.setdefault((event["pid"], event["tid"]), []).append(piece)
    tracks = tuple(
        Track(
            group=t["group"],
            name=t["name"],
            pid=t["pid"],
            slices=tuple(sorted(slices.get((t["trace_pid"], t["trace_tid"]), []), key=_start)),
            ready=t["ready"],
            exitcode=t["exitcode"],
            is_child=t["is_child"],
        )
        for t in meta["tracks"]
    )
    return TraceContents(meta["name"], meta["origin"], tracks)


def _start(piece: Slice) -> float:
    return piece.start
