"""A cancel that lands at any await of a launch, including before the first one, wins at
once, and whatever was spawned by then is reaped (the leak check sees to that)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import trio.testing

import launch
from launch import ProcessSpec, ShutdownPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

FAST = ShutdownPolicy(stop_timeout=1.0, term_timeout=1.0, kill_timeout=1.0)
HOLD_DEVICE = Path(__file__).parent.parent / "scripts" / "hold_device.py"


def serving(method: str, n: int = 3, init: float = 0.2) -> list[ProcessSpec]:
    return [
        ProcessSpec(
            "targets:serve",
            name=f"w{i}",
            kwargs={"init": init},
            start_method=method,  # type: ignore[arg-type]
        )
        for i in range(n)
    ]


async def test_open_group_in_an_already_cancelled_scope_returns_at_once(
    start_method: str,
) -> None:
    entered = False
    started = time.monotonic()
    with anyio.move_on_after(10) as outer:
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with launch.open_group(serving(start_method), shutdown=FAST):
                entered = True
    assert not outer.cancelled_caught, "the outer deadline had to rescue it"
    assert not entered
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.05, 0.4])
async def test_a_cancel_landing_anywhere_in_a_launch_wins(start_method: str, delay: float) -> None:
    started = time.monotonic()
    with anyio.move_on_after(30) as outer:
        with anyio.move_on_after(delay):
            async with launch.open_group(serving(start_method), shutdown=FAST):
                await anyio.sleep_forever()
    assert not outer.cancelled_caught, "the outer deadline had to rescue it"
    # Cancelled children that were not READY get SIGTERM at once; READY ones stop
    # cooperatively: far below the budget either way.
    assert time.monotonic() - started < delay + FAST.budget + 5.0


async def test_a_stage_failing_at_once_while_another_opens_its_group(
    tmp_path: Path, start_method: str
) -> None:
    lock_dir = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, str(HOLD_DEVICE), str(lock_dir), "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        spec = launch.PipelineSpec(
            [
                launch.StageSpec("blocked", serving(start_method, n=1), devices=(0,)),
                launch.StageSpec("free", serving(start_method, n=2, init=1.0)),
            ],
            lock_dir=lock_dir,
            device_lock_timeout=0,
            shutdown=FAST,
        )
        started = time.monotonic()
        with anyio.move_on_after(30) as outer:
            with pytest.raises(launch.LaunchFailed) as info:
                async with launch.open_pipeline(spec):
                    pytest.fail("the pipeline started with a device it could not lock")
        assert not outer.cancelled_caught, "the pipeline hung; the outer deadline rescued it"
        assert isinstance(info.value.first, launch.DeviceLockTimeout)
        assert time.monotonic() - started < FAST.budget + 5.0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)


async def test_the_root_cause_is_the_earliest_failure_even_when_its_exit_is_slow(
    tmp_path: Path, start_method: str, grace_clock: trio.testing.MockClock | None
) -> None:
    # "early" raises first but takes 2 s over its interpreter's exit; "late" raises 0.25 s
    # after it and exits at once. The parent must not lose "early" while it exits.
    # Under trio, early's stop_timeout passes in virtual time (no ready_timeout: nothing
    # that a slow start could be jumped past).
    marker = str(tmp_path / "early-raised")
    specs = [
        ProcessSpec(
            "fault_signals_targets:crash_slow_exit",
            name="early",
            kwargs={"marker": marker},
            start_method=start_method,  # type: ignore[arg-type]
            ready_timeout=None,
        ),
        ProcessSpec(
            "fault_signals_targets:crash_after",
            name="late",
            kwargs={"marker": marker, "delay": 0.25},
            start_method=start_method,  # type: ignore[arg-type]
            ready_timeout=None,
        ),
    ]
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, shutdown=FAST):
            pytest.fail("READY without a crash")
    first = info.value.first
    assert first.name == "early"
    assert first.remote_message == "the first failure"


async def test_a_nested_launch_failure_comes_out_whole(start_method: str) -> None:
    # The inner group's LaunchFailed crosses the outer group's task group: it is unwrapped
    # from that task group's wrapper, never down to its own leaf.
    crash = ProcessSpec(
        "targets:crash",
        name="bad",
        start_method=start_method,  # type: ignore[arg-type]
    )
    with pytest.raises(launch.LaunchFailed) as info:
        async with (
            launch.open_group(serving(start_method, n=1), name="outer", shutdown=FAST),
            launch.open_group([crash], name="inner", shutdown=FAST),
        ):
            pytest.fail("READY without a crash")
    assert type(info.value) is launch.LaunchFailed
    assert info.value.first.name == "bad"
