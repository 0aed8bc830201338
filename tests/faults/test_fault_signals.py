"""Repeated Ctrl-C during a teardown that must escalate to SIGKILL: the teardown stays
bounded and complete, then the KeyboardInterrupt reaches the caller."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from procs import alive

from launch._spec import START_METHODS

PARENT = Path(__file__).with_name("fault_signals_parent.py")
TEARDOWN_BUDGET_S = 0.5 + 0.5 + 1.0  # the parent's ShutdownPolicy
MARGIN_S = 8.0  # a loaded 2-core machine; a stalled teardown never ends at all


def live(pids: list[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize("mode", ["trio", "asyncio", "blocking"])
def test_ctrl_c_storm_during_teardown_kills_everything_then_interrupts(mode: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, str(PARENT), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(live(pids)) == len(pids) == len(START_METHODS)  # one child per method
        parent.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        # Ctrl-C again and again, through the cooperative stop, SIGTERM and SIGKILL steps.
        while parent.poll() is None and time.monotonic() - interrupted < TEARDOWN_BUDGET_S + 1:
            time.sleep(0.1)
            parent.send_signal(signal.SIGINT)
        try:
            _, stderr = parent.communicate(timeout=TEARDOWN_BUDGET_S + MARGIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the parent ({mode}) hung in its teardown after repeated Ctrl-C")
        took = time.monotonic() - interrupted
        assert live(pids) == [], "children outlived the parent's teardown"
        assert "KeyboardInterrupt" in stderr, stderr[-2000:]
        assert parent.returncode != 0
        assert took < TEARDOWN_BUDGET_S + MARGIN_S
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in live(pids):
            psutil.Process(pid).kill()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_ctrl_c_during_startup_is_a_plain_keyboard_interrupt(backend: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, str(PARENT), "startup", backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "starting"
        time.sleep(0.5)  # into the child's init
        parent.send_signal(signal.SIGINT)
        stdout, stderr = parent.communicate(timeout=TEARDOWN_BUDGET_S + MARGIN_S)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    # Not an ExceptionGroup of one KeyboardInterrupt from launch's task groups. asyncio's
    # runner turns the first Ctrl-C into a cancel of the main task (and raises
    # KeyboardInterrupt out of asyncio.run afterwards).
    expected = "KeyboardInterrupt()" if backend == "trio" else "CancelledError()"
    assert stdout.strip() == f"raised {expected}"
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr[-1000:]
