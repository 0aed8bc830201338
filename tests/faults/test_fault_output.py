"""``output="prefix"`` under a hostile parent stdout and a hostile child.

A parent whose stdout nobody reads must still run its event loop (a sibling's crash is
acted on at once; lines are dropped and counted, never waited on), and a child writing
megabytes without a newline costs the parent bounded memory and linear time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

import launch
from launch import ProcessSpec
from launch._output import MAX_LINE, SPLIT_MARK

HERE = Path(__file__).parent
ROOT = HERE.parent.parent

# The parent: a group with a chatty prefix child and a sibling that dies 1 s after READY.
STALLED_PARENT = textwrap.dedent(
    """
    import json, os, sys, time
    import anyio
    import launch
    from launch.testing import misbehaving

    backend, marker = sys.argv[1], sys.argv[2]

    async def main():
        specs = [
            launch.ProcessSpec("fault_output_targets:chatty_forever", name="chatty",
                               output="prefix"),
            misbehaving("die_after_ready", "crasher", after=1.0),
        ]
        group = None
        try:
            async with launch.open_group(specs, name="g") as group:
                ready_at = time.monotonic()
                await anyio.sleep(60)
        except launch.LaunchFailed as exc:
            report = {
                "reported_after_s": time.monotonic() - ready_at,
                "first": type(exc.first).__name__,
                "name": exc.first.name,
                "dropped": group["chatty"]._output.dropped_lines,
            }
            with open(marker + ".tmp", "w") as f:
                json.dump(report, f)
            os.rename(marker + ".tmp", marker)

    anyio.run(main, backend=backend)
    """
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_an_unread_parent_stdout_never_stalls_the_loop(backend: str, tmp_path: Path) -> None:
    marker = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    with (tmp_path / "stderr").open("wb") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", STALLED_PARENT, backend, str(marker)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,  # never read
            stderr=stderr,
            env=env,
        )
    try:
        parent.wait(timeout=30)  # HEAD: blocked in write() for good
    finally:
        parent.kill()
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
    errors = (tmp_path / "stderr").read_text()
    assert parent.returncode == 0, errors
    report = json.loads(marker.read_text())
    assert report["first"] == "ChildDied" and report["name"] == "crasher", report
    assert report["reported_after_s"] < 10, report  # it dies 1 s after READY
    assert report["dropped"] > 0, report


async def test_dropped_lines_are_counted_and_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent's stdout is a pipe whose reader starts 2 s late.
    read_end, write_end = os.pipe()
    out = tmp_path / "out"
    with out.open("wb") as sink:
        reader = subprocess.Popen(["sh", "-c", "sleep 2; exec cat"], stdin=read_end, stdout=sink)
    os.close(read_end)
    stdout = open(write_end, "w")  # noqa: SIM115 - closed below, so that cat sees EOF
    try:
        monkeypatch.setattr(sys, "stdout", stdout)
        spec = ProcessSpec("fault_output_targets:chatty_forever", name="chatty", output="prefix")
        longest_gap = 0.0
        async with launch.open_group([spec], name="g") as group:
            pump = group["chatty"]._output
            assert pump is not None
            started = last = time.monotonic()
            while time.monotonic() - started < 3:  # stalled, then read again
                await anyio.sleep(0.02)
                now = time.monotonic()
                longest_gap, last = max(longest_gap, now - last), now
        monkeypatch.undo()
    finally:
        stdout.close()
        reader.wait(timeout=30)
    assert longest_gap < 1.0  # HEAD: about 2 s, blocked in write() until cat started
    assert pump.dropped_lines > 0
    text = out.read_text()
    notices = re.findall(
        r"^\[g/chatty\] \[launch: (\d+) lines dropped: stdout was not writable\]$",
        text,
        re.MULTILINE,
    )
    assert notices, text[-2000:]
    assert 0 < sum(map(int, notices)) <= pump.dropped_lines


async def test_a_line_without_end_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fault_output_targets import END, UNIT

    total = len(UNIT) * (32 * 1024 * 1024 // len(UNIT))  # 32 MiB, whole characters
    out = tmp_path / "out"
    stdout = open(out, "w")  # noqa: SIM115
    try:
        monkeypatch.setattr(sys, "stdout", stdout)
        spec = ProcessSpec(
            "fault_output_targets:no_newline", name="w", kwargs={"total": total}, output="prefix"
        )
        peak = 0
        async with launch.open_group([spec], name="g") as group:
            pump = group["w"]._output
            assert pump is not None
            started = time.monotonic()
            while not (group["w"].output_tail or [""])[-1].endswith(END):
                assert time.monotonic() - started < 60, "32 MiB took over a minute"
                peak = max(peak, pump.buffered_bytes)
                await anyio.sleep(0.005)
            elapsed = time.monotonic() - started
        monkeypatch.undo()
    finally:
        stdout.close()
    assert peak <= MAX_LINE
    assert elapsed < 20  # linear: well under a second here; HEAD's quadratic copy takes far longer
    tail = group["w"].output_tail
    assert all(len(line) <= 4096 + 60 for line in tail)
    assert all(line.endswith(SPLIT_MARK) for line in tail[:-1])
    assert "\ufffd" not in "".join(tail)  # pieces end on character boundaries
    # What was printed: pieces of at most MAX_LINE bytes, that join into what was written.
    prefix, mark = b"[g/w] ", SPLIT_MARK.encode()
    pieces = out.read_bytes().split(b"\n")[:-1]
    assert all(
        p.startswith(prefix) and len(p) <= len(prefix) + MAX_LINE + len(mark) for p in pieces
    )
    assert all(p.endswith(mark) for p in pieces[:-1])
    joined = b"".join(p[len(prefix) :].removesuffix(mark) for p in pieces)
    assert joined == UNIT * (total // len(UNIT)) + END.encode()
