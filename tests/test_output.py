"""Child output: inherited by default; with output="prefix", read by the tree's tasks,
prefixed, never lost, and its last lines in the child's error."""

from __future__ import annotations

import pytest

import launch
from launch import ProcessSpec

pytestmark = pytest.mark.anyio


async def test_prefixed_output_is_complete(
    start_method: str, capfd: pytest.CaptureFixture[str]
) -> None:
    lines = 3000  # ~150 KB: more than a pipe holds, so the parent must read while it runs
    spec = ProcessSpec(
        "targets:chatty",
        name="w0",
        kwargs={"lines": lines},
        start_method=start_method,  # type: ignore[arg-type]
        output="prefix",
    )
    async with launch.open_group([spec], name="tp") as group:
        pass
    out, err = capfd.readouterr()
    got = [line for line in out.splitlines() if line.startswith("[tp/w0] out ")]
    assert got == [f"[tp/w0] out {i} " + "x" * 40 for i in range(lines)]
    assert "[tp/w0] partial last line" in out.splitlines()  # written at exit, no newline
    assert [line for line in err.splitlines() if line.startswith("[tp/w0]")] == [
        "[tp/w0] err 0",
        "[tp/w0] err 1",
        "[tp/w0] err 2",
    ]
    assert group["w0"].output_tail[-1] == "partial last line"


async def test_last_output_lines_appear_in_the_error(start_method: str) -> None:
    spec = ProcessSpec(
        "targets:print_then_crash",
        name="w0",
        start_method=start_method,  # type: ignore[arg-type]
        output="prefix",
    )
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec], name="tp"):
            pass
    first = info.value.first
    assert first.output_tail is not None
    assert "loading shard 3 of 8" in first.output_tail
    assert "warning: shard 3 checksum mismatch" in first.output_tail
    text = str(first)
    assert "--- last output of 'w0' ---" in text
    assert "loading shard 3 of 8" in text.split("--- last output of 'w0' ---")[1]


async def test_inherited_output_keeps_no_tail() -> None:
    async with launch.open_group([ProcessSpec("targets:serve", name="a")]) as group:
        assert group["a"].output_tail == []


def test_unknown_output_mode() -> None:
    with pytest.raises(ValueError, match="unknown output 'pipe'"):
        ProcessSpec("targets:serve", name="a", output="pipe")  # type: ignore[arg-type]


async def test_state_changes_log_at_info_and_handshakes_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="launch")
    spec = ProcessSpec("targets:serve", name="a", kwargs={"init": 0.05})
    async with launch.open_group([spec], name="tp") as group:
        pid = group["a"].pid
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert f"tp/a (pid {pid}): pending -> starting" in info
    for change in (
        "starting -> ready after",
        "ready -> stopping",
        "stopping -> exited with exit code 0",
    ):
        assert any(change in m for m in info), (change, info)
    debug = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert any(m.startswith(f"tp/a (pid {pid}) sent ('phase', 'init'") for m in debug), debug
    assert any("sent ready (" in m for m in debug)
    assert any(m == f"tp/a (pid {pid}): sending stop" for m in debug)
