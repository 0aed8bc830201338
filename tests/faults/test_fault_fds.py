"""Fault injection: a child started with ``fork`` inherits none of launch's own fds.

A forked child is a copy of the parent's fd table: without ``launch._fds`` it kept the
flock-ed device-lock fd (the device stayed locked after READY and a later stage on it
timed out, blaming "an unknown process"), and every sibling's control socket (so a
sibling never saw EOF) and pidfd.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import launch
from launch import PipelineSpec, ProcessSpec, ShutdownPolicy, StageSpec

pytestmark = pytest.mark.anyio

FAST = ShutdownPolicy(stop_timeout=2.0, term_timeout=0.5, kill_timeout=2.0)


def _fd_table(pid: int) -> tuple[set[str], set[int]]:
    """What ``pid`` holds: its fds' link targets, and the pids its pidfds pin."""
    links, pinned = set(), set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            links.add(link)
            if link == "anon_inode:[pidfd]":
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    for line in f:
                        if line.startswith("Pid:"):
                            pinned.add(int(line.split()[1]))
        except OSError:
            pass
    return links, pinned


def _own_sockets() -> set[str]:
    return {
        link
        for fd in os.listdir("/proc/self/fd")
        if (link := _readlink(f"/proc/self/fd/{fd}")).startswith("socket:")
    }


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


async def test_a_forked_child_inherits_no_launch_fd(tmp_path: Path) -> None:
    """Stage ``a`` (two fork children on device 0) is READY, so its device lock is
    released: stage ``b`` on the same device must get it at once, which it cannot if a
    forked child kept the lock's fd. Neither forked sibling holds the other's control
    socket (the parent's end) or a pidfd of it."""
    before = _own_sockets()
    fork = [ProcessSpec("targets:serve", name=f"a{i}", start_method="fork") for i in range(2)]
    pipe = PipelineSpec(
        [
            StageSpec("a", fork, devices=(0,)),
            StageSpec("b", [ProcessSpec("targets:serve", name="b0")], devices=(0,), after="a"),
        ],
        lock_dir=tmp_path,
        device_lock_timeout=5.0,
        shutdown=FAST,
    )
    async with launch.open_pipeline(pipe) as running:
        launch_sockets = _own_sockets() - before  # the parent's ends of the control sockets
        assert launch_sockets
        a0, a1 = running["a"]["a0"], running["a"]["a1"]
        for holder, other in ((a0, a1), (a1, a0)):
            assert holder.pid is not None
            links, pinned = _fd_table(holder.pid)
            assert not links & launch_sockets, f"{holder.name} holds {links & launch_sockets}"
            assert other.pid not in pinned, f"{holder.name} holds a pidfd of {other.name}"
            assert not any(str(tmp_path) in link for link in links), links
