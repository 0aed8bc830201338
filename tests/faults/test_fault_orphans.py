"""Fault injection: no orphan, whatever the parent's death, the child's state or its fds.

- parent death (SIGKILL, SIGTERM) takes every child's whole tree within 2 s: a grandchild
  that ignores SIGTERM, a daemon that left the group (double fork + setsid), a child stuck
  in a C call that holds the GIL with SIGTERM blocked, control sockets above fd 1023;
- teardown delivers the cooperative stop above fd 1023 and reaps daemons too;
- running out of fds is a SpawnFailed naming the limit; a forked child reports its
  failure when the parent's stderr has no fd (launch's own fds in a forked child:
  ``test_fault_fds.py``).

Scenarios that need a real parent run in ``fault_orphans_parent.py``, one run per backend
(and per signal) with a child of every start method in it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest

import launch
from launch import ProcessSpec, ShutdownPolicy
from launch._spec import START_METHODS

PARENT = Path(__file__).with_name("fault_orphans_parent.py")
BACKENDS = ("trio", "asyncio")
PARENT_DEATH_BOUND_S = 2.0
FAST = ShutdownPolicy(stop_timeout=2.0, term_timeout=0.5, kill_timeout=2.0)


# --- helpers --------------------------------------------------------------------------


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _group_members(pgids: set[int]) -> list[int]:
    found = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) in pgids:
                found.append(pid)
        except OSError:
            pass
    return found


def _tree(info: dict[str, dict[str, object]]) -> dict[int, str]:
    """Every process of the launched trees, pid → role: the children, their grandchildren
    and daemons, and every member of their process groups (their guards)."""
    roles: dict[int, str] = {}
    children = {int(pid): name for name, pid in info["children"].items()}  # type: ignore[call-overload]
    for pid in _group_members(set(children)):
        roles[pid] = f"member of group {children.get(os.getpgid(pid), '?')}"
    for name, payload in info["payloads"].items():
        for role, pid in payload.items():  # type: ignore[attr-defined]
            roles[int(pid)] = f"{role} of {name}"
    for pid, name in children.items():
        roles[pid] = f"child {name}"
    return roles


def _pinned(pids: dict[int, str]) -> dict[psutil.Process, str]:
    procs = {}
    for pid, role in pids.items():
        try:
            procs[psutil.Process(pid)] = role
        except psutil.NoSuchProcess:
            pass
    return procs


def _left_after(procs: dict[psutil.Process, str], since: float, bound: float) -> list[str]:
    """Poll until every process is gone or ``bound`` seconds after ``since``; the ones
    still alive then, described."""
    while True:
        left = [f"{p.pid} ({role})" for p, role in procs.items() if _alive(p)]
        if not left or time.monotonic() - since > bound:
            return left
        time.sleep(0.02)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return list(proc.cmdline())
    except psutil.Error:
        return []


def _kill_all(procs: dict[psutil.Process, str]) -> None:
    for proc in procs:
        try:
            proc.kill()  # psutil checks that the pid was not reused
        except psutil.Error:
            pass


def _read_json(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, object]:
    assert proc.stdout is not None
    poller = select.poll()
    poller.register(proc.stdout, select.POLLIN)
    if not poller.poll(timeout * 1000):
        proc.kill()
        pytest.fail(f"{PARENT.name} printed nothing within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        pytest.fail(f"{PARENT.name} exited ({proc.returncode}) before printing")
    result: dict[str, object] = json.loads(line)
    return result


def _start_parent(backend: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PARENT), backend, mode], stdout=subprocess.PIPE, text=True
    )


@pytest.fixture
def tracked() -> Iterator[dict[psutil.Process, str]]:
    """Processes a test must see gone; whatever is left is killed afterwards."""
    procs: dict[psutil.Process, str] = {}
    yield procs
    _kill_all(procs)


# --- parent death ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_parent_death_takes_every_childs_whole_tree_within_2s(
    backend: str, kill: signal.Signals, tracked: dict[psutil.Process, str]
) -> None:
    """One child per start method × (serving; stuck in C holding the GIL, SIGTERM
    blocked), each with a SIGTERM-ignoring grandchild and a daemon; the parent holds
    over 1024 fds, so every control socket is above fd 1023."""
    parent = _start_parent(backend, "hold")
    try:
        info = _read_json(parent)
        assert int(info["fd"]) > 1023  # type: ignore[call-overload]
        tracked.update(_pinned(_tree(info)))  # type: ignore[arg-type]
        # per start method: 2 children, each with a grandchild and a daemon
        assert len(tracked) >= 6 * len(START_METHODS), tracked
        # The large (forked) children's guards are fresh interpreters, the others forks.
        deadline = time.monotonic() + 5.0
        while len(fresh := [p for p in tracked if "_fresh_main" in " ".join(_cmdline(p))]) < 2:
            assert time.monotonic() < deadline, f"fresh guards: {fresh}"
            time.sleep(0.05)
        parent.send_signal(kill)
        parent.wait()
        killed = time.monotonic()
        left = _left_after(tracked, killed, PARENT_DEATH_BOUND_S)
        assert not left, f"alive {PARENT_DEATH_BOUND_S}s after the parent's {kill.name}: {left}"
    finally:
        parent.kill()
        parent.wait()


# --- teardown -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_teardown_above_fd_1023_stops_cooperatively_and_reaps_daemons(
    backend: str, tracked: dict[psutil.Process, str]
) -> None:
    parent = _start_parent(backend, "stop")
    try:
        info = _read_json(parent)
        assert int(info["fd"]) > 1023  # type: ignore[call-overload]
        tracked.update(_pinned(_tree(info)))  # type: ignore[arg-type]
        result = _read_json(parent)
        parent.wait(timeout=30)
        exitcodes = result["exitcodes"]
        for name, code in exitcodes.items():  # type: ignore[attr-defined]
            # serving: the stop request arrived (over a socket above fd 1023), exit 0;
            # stuck in C: only the SIGKILL step could end it
            assert code == (0 if name.endswith("serve") else -signal.SIGKILL), exitcodes
        # teardown is over: what is left now is an orphan (1 s for a SIGKILL to land)
        left = _left_after(tracked, time.monotonic(), 1.0)
        assert not left, f"alive after the teardown: {left}"
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.anyio
async def test_a_child_that_dies_after_ready_leaves_no_descendant(
    start_method: str, tracked: dict[psutil.Process, str], tmp_path: Path
) -> None:
    """The child raises after READY: its bootstrap kills and reaps its subtree, the
    daemon that left the group included, before it exits."""
    go = tmp_path / "go"
    spec = ProcessSpec(
        "fault_orphans_targets:family",
        name="dies",
        kwargs={"mode": "raise", "go": str(go)},
        start_method=start_method,  # type: ignore[arg-type]
    )
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec], name="g", shutdown=FAST) as group:
            tracked.update(_pinned(_descendants(group["dies"])))
            go.touch()
            await _until_cancelled()
    assert isinstance(info.value.first, launch.ChildDied)
    left = _left_after(tracked, time.monotonic(), 1.0)
    assert not left, f"alive after the child died: {left}"


@pytest.mark.anyio
async def test_forkserver_kills_what_a_sigkilled_child_left_behind(
    tracked: dict[psutil.Process, str], tmp_path: Path
) -> None:
    """A forkserver child SIGKILLed by someone else cannot clean up; its daemon is
    re-parented to launch's forkserver (a subreaper), which kills it."""
    go = tmp_path / "go"
    spec = ProcessSpec(
        "fault_orphans_targets:family",
        name="killed",
        kwargs={"mode": "sigkill", "go": str(go)},
        start_method="forkserver",
    )
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec], name="g", shutdown=FAST) as group:
            tracked.update(_pinned(_descendants(group["killed"])))
            go.touch()
            await _until_cancelled()
    assert info.value.first.exitcode == -signal.SIGKILL, info.value.first
    left = _left_after(tracked, time.monotonic(), 1.0)
    assert not left, f"alive after the child was SIGKILLed: {left}"


def _descendants(child: launch.Child) -> dict[int, str]:
    roles = {int(pid): f"{role} of {child.name}" for role, pid in child.payload.items()}
    assert len(_pinned(roles)) == 2, "the descendants must be alive here"
    return roles


async def _until_cancelled() -> None:
    await anyio.sleep(30)
    pytest.fail("the child's death did not cancel the block")


# --- fds ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_out_of_fds_is_a_spawn_failure_naming_the_limit(backend: str) -> None:
    parent = _start_parent(backend, "emfile")
    try:
        failures = _read_json(parent)["failures"]
        parent.wait(timeout=30)
    finally:
        parent.kill()
        parent.wait()
    assert set(failures) == set(START_METHODS), failures  # type: ignore[arg-type]
    for method, (kind, text) in failures.items():  # type: ignore[attr-defined]
        assert kind == "SpawnFailed", (method, kind, text)
        assert "RLIMIT_NOFILE" in text, (method, text)


@pytest.mark.anyio
async def test_a_forked_child_reports_its_failure_when_stderr_has_no_fileno(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Under capsys, ``sys.stderr`` has no ``fileno()``: the forked child must still boot
    and send its traceback."""
    spec = ProcessSpec("targets:crash", name="c", start_method="fork")
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec], name="g", shutdown=FAST):
            pytest.fail("the block must not be entered")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed), first
    assert "weights file is corrupt" in (first.remote_traceback or ""), str(first)
