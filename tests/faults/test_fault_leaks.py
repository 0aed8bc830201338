"""The pytest plugin's leak check touches only what the test started, and sees it all.

It must never kill a process of the same user that the test did not start (it once
SIGKILLed every python orphan of the user), and it must catch a leaked orphan whatever
its name (a ``sleep`` in a session of its own whose parent exited).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil  # type: ignore[import-untyped]
import pytest

from launch.testing import LeakedProcesses, ProcessWatch

SLEEPER = "import time; time.sleep(60)"


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _kill(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        pass


def _wait_reparented(pid: int, old_parent: int) -> None:
    deadline = time.monotonic() + 10
    while psutil.Process(pid).ppid() == old_parent:
        assert time.monotonic() < deadline, "the orphan was never re-parented"
        time.sleep(0.02)


def test_an_unrelated_python_orphan_is_never_touched() -> None:
    # Like a daemon started from another shell: a clean environment, started before the
    # check, orphaned while the test runs (re-parented to init, as the old check hunted).
    starter = (
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        text=True,
    )
    assert parent.stdout is not None and parent.stdin is not None
    daemon = int(parent.stdout.readline())
    try:
        watch = ProcessWatch()
        parent.stdin.close()  # the starter exits; the daemon is orphaned
        parent.wait(timeout=10)
        parent.stdout.close()
        _wait_reparented(daemon, parent.pid)
        assert "python" in psutil.Process(daemon).name()
        assert daemon not in {p.pid for p in watch.leftovers()}
        watch.check()  # nothing to report
        assert _alive(daemon)
    finally:
        _kill(daemon)
        parent.kill()
        parent.wait()


def test_a_leaked_orphan_of_any_name_is_reported_and_killed() -> None:
    watch = ProcessWatch()
    leaker = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True,\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", leaker], capture_output=True, text=True, check=True, timeout=30
    )
    orphan = int(out.stdout)
    try:
        assert psutil.Process(orphan).name() == "sleep"
        with pytest.raises(LeakedProcesses, match=rf"\b{orphan} sleep 60"):
            watch.check()
        assert not _alive(orphan)  # check() waits (bounded) until it is dead
    finally:
        _kill(orphan)


def test_a_leaked_launch_child_is_caught(start_method: str) -> None:
    # A parent that still holds a group of launch children when the test ends.
    holder = (
        "import sys, launch\n"
        "from launch.testing import misbehaving\n"
        f"spec = misbehaving('serve', 'leaky', start_method={start_method!r})\n"
        "with launch.start_group([spec]) as group:\n"
        "    print(group['leaky'].pid, flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    watch = ProcessWatch()
    parent = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None and parent.stdin is not None
    try:
        child = int(parent.stdout.readline())
        assert {child, parent.pid} <= {p.pid for p in watch.leftovers()}
        with pytest.raises(LeakedProcesses, match=rf"\b{child} "):
            watch.check()
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()
        parent.stdout.close()
