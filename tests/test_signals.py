"""Signals on a real parent process running a real group (DESIGN.md: testing conventions)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launch._spec import START_METHODS

SCRIPT = Path(__file__).parent / "scripts" / "hold_group.py"


def start_holder(backend: str, init: float, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), backend, str(init), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            pytest.fail(f"no output from {SCRIPT.name} within {timeout}s")
    return proc.stdout.readline()


def gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_parent_sigkill_children_outlive_worker_threads_then_die(backend: str) -> None:
    # PDEATHSIG hazard: a child must not die with the worker thread that spawned it. The
    # holder ends its worker threads once all are READY (as their 10 s idle timeout would)
    # and reports only once they are gone.
    holder = start_holder(backend, 0.0, "--end-worker-threads")
    try:
        assert read_line(holder).strip() == "starting"
        info = json.loads(read_line(holder))
        assert info["threads_left"] == [], info
        pids = list(info["children"].values())
        assert gone_within(pids, 0) == pids, "a child died with the thread that spawned it"
        holder.kill()
        holder.wait()
        killed = time.monotonic()
        left = gone_within([*pids, info["forkserver"]], 1.0)
        assert left == [], f"still alive {time.monotonic() - killed:.2f}s after parent SIGKILL"
    finally:
        holder.kill()
        holder.wait()


def guard(proc: psutil.Process) -> bool:
    try:
        return bool(proc.name() == "launch-guard")
    except psutil.NoSuchProcess:
        return False


def wait_descendants(pid: int, at_least: int, within: float) -> list[int]:
    """Every descendant of ``pid`` (guards included), once ``at_least`` of them that are
    not guards exist. A guard that has not yet named itself is counted as a child here,
    hence "at least": what matters is that each one is gone afterwards."""
    deadline = time.monotonic() + within
    while True:
        children = sum(not guard(p) for p in psutil.Process(pid).children(recursive=True))
        if children >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert children >= at_least, f"{children} of {at_least} children started"
    time.sleep(0.2)  # the guards of the last ones started
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_sigint_during_startup_exits_fast_and_leaves_nothing(backend: str) -> None:
    holder = start_holder(backend, 30.0)  # READY would take 30 s
    try:
        assert read_line(holder).strip() == "starting"
        want = len(START_METHODS) + 1  # the children and the forkserver
        descendants = wait_descendants(holder.pid, at_least=want, within=10.0)
        time.sleep(0.3)  # into their init
        holder.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        holder.wait(timeout=3.0)
        assert time.monotonic() - interrupted < 3.0
        assert gone_within(descendants, 1.0) == []
    finally:
        holder.kill()
        holder.wait()


def test_callable_target_defined_in_main() -> None:
    script = Path(__file__).parent / "scripts" / "main_target.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()[: len(START_METHODS)]
    assert lines == [f"{method} 42" for method in START_METHODS]
