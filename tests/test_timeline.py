"""Timelines: one clock for every child, Chrome trace export, Gantt charts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import launch
from launch import PipelineSpec, ProcessSpec, StageSpec

pytestmark = pytest.mark.anyio


def serve(name: str, init: float = 0.0) -> ProcessSpec:
    return ProcessSpec("targets:serve", name=name, kwargs={"init": init})


async def test_group_timeline_has_every_step_in_order() -> None:
    async with launch.open_group([serve("a", 0.2), serve("b")], name="tp") as group:
        timeline = group.timeline
    assert timeline.name == "tp"
    assert [t.name for t in timeline.tracks] == ["a", "b"]
    a = timeline.tracks[0]
    names = [s.name for s in a.slices]
    steps = [n for n in names if n != "launch lock"]  # present when the lock was waited on
    assert steps[:4] == ["spawn", "interpreter start", "import target", "init"]
    assert names[-1] == "serving"  # the snapshot was taken while it served
    starts = [s.start for s in a.slices]
    assert starts == sorted(starts) and starts[0] >= 0
    init = next(s for s in a.slices if s.name == "init")
    assert 0.2 <= init.duration < 1.5
    assert a.ready is not None and abs(a.ready - init.end) < 1e-6
    assert timeline.all_ready == max(t.ready or 0 for t in timeline.tracks)
    # after the group is left, the stop and the exit are on the timeline too
    final = group.timeline.tracks[0]
    assert [s.name for s in final.slices][-2:] == ["serving", "stopping"]
    assert final.exitcode == 0


async def test_trace_is_valid_trace_event_json_with_a_track_per_child(tmp_path: Path) -> None:
    spec = PipelineSpec(
        [
            StageSpec("thinker", [serve("t0", 0.1), serve("t1", 0.1)], devices=(0,)),
            StageSpec("talker", [serve("k0")], devices=(0,)),  # waits for device 0
        ],
        lock_dir=tmp_path / "locks",
    )
    async with launch.open_pipeline(spec) as running:
        pass
    path = running.timeline.write_trace(tmp_path / "trace.json")
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    for event in events:
        assert {"name", "ph", "pid"} <= event.keys()
        assert event["ph"] in ("X", "M", "i")
        if event["ph"] == "X":
            assert event["dur"] >= 0 and event["ts"] >= 0 and "tid" in event
    threads = {
        e["args"]["name"]: (e["pid"], e["tid"]) for e in events if e["name"] == "thread_name"
    }
    children = {c.name: c.pid for c in running.children}
    for name, pid in children.items():
        assert threads[f"{name} (pid {pid})"][1] == pid  # one track per child, by its pid
    processes = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert processes == {"stage thinker", "stage talker"}
    # the talker's device-lock wait is its own slice, as long as the thinker's startup
    lock = [e for e in events if e["ph"] == "X" and e["name"] == "device lock"]
    # (whichever stage locked first may show a short wait of its own too)
    assert lock and max(e["dur"] for e in lock) > 50_000
    # phases nest inside each child's startup slice
    t0 = threads[f"t0 (pid {children['t0']})"]
    on_t0 = [e for e in events if e["ph"] == "X" and (e["pid"], e["tid"]) == t0]
    startup = next(e for e in on_t0 if e["name"] == "startup")
    init = next(e for e in on_t0 if e["name"] == "init")
    assert (
        startup["ts"] <= init["ts"]
        and init["ts"] + init["dur"] <= startup["ts"] + startup["dur"] + 1
    )
    # and the trace reads back into the same timeline
    again = launch.Timeline.read_trace(path)
    assert again.name == running.timeline.name
    assert [t.name for t in again.children] == ["t0", "t1", "k0"]
    assert again.tracks[0].slices[0].name == running.timeline.tracks[0].slices[0].name


@pytest.mark.parametrize("suffix", [".png", ".svg"])
async def test_chart_files_are_written(tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    async with launch.open_group([serve("a", 0.1), serve("b")], name="tp") as group:
        pass
    path = group.timeline.write_chart(tmp_path / f"chart{suffix}")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:500]
    if suffix == ".svg":
        assert b"tp / a" in data or b"tp" in data


def test_trace_command_renders_a_saved_trace(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "launch", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    demo = cli("demo", "--no-torch", "--plain", "--trace", "t.json", "--timeline", "d.svg")
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "d.svg").exists()
    out = cli("trace", "t.json", "--timeline", "t.png")
    assert out.returncode == 0, out.stderr
    assert "4 children of 'omni-demo', all READY at" in out.stdout
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    (tmp_path / "bad.json").write_text("{}")
    bad = cli("trace", "bad.json", "--timeline", "x.png")
    assert bad.returncode == 2
    assert "bad.json: not a trace written by launch" in bad.stderr
