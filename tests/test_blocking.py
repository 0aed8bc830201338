"""The blocking facade: start_group / start_pipeline from plain sync code, several
threads, and a thread whose asyncio loop is running; the same exceptions as async."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from procs import alive

import launch
from launch import PipelineSpec, ProcessSpec, ShutdownPolicy, StageSpec

FAST = ShutdownPolicy(stop_timeout=1.0, term_timeout=1.0, kill_timeout=1.0)


@pytest.fixture(params=["trio", "asyncio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def serve(name: str, **kwargs: object) -> ProcessSpec:
    return ProcessSpec("targets:serve", name=name, kwargs=kwargs)


def test_start_group_from_plain_sync_code(backend: str) -> None:
    with launch.start_group(
        [serve(f"w{i}") for i in range(3)],
        name="tp",
        backend=backend,  # type: ignore[arg-type]
    ) as group:
        assert [c.state for c in group.children] == [launch.ChildState.READY] * 3
        assert group["w1"].payload == {"pid": group["w1"].pid}
        assert group.running
        pids = [c.pid for c in group]
        assert all(alive(pid) for pid in pids if pid)
    assert not any(alive(pid) for pid in pids if pid)
    assert not group.running


def test_a_startup_failure_raises_launch_failed_with_the_childs_traceback(backend: str) -> None:
    specs = [serve("ok"), ProcessSpec("targets:crash", name="bad")]
    with (
        pytest.raises(launch.LaunchFailed) as info,
        launch.start_group(specs, backend=backend),  # type: ignore[arg-type]
    ):
        pytest.fail("the block must not run")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "bad"
    assert "weights file is corrupt" in (first.remote_traceback or "")


def test_invalid_specs_raise_value_error_before_anything_starts() -> None:
    with (
        pytest.raises(ValueError, match="duplicate child name"),
        launch.start_group([serve("a"), serve("a")]),
    ):
        pass
    with (
        pytest.raises(ValueError, match="backend must be"),
        launch.start_group([serve("a")], backend="curio"),  # type: ignore[arg-type]
    ):
        pass


def test_a_child_dying_after_ready_is_seen_by_wait_and_the_callback(backend: str) -> None:
    seen: list[launch.LaunchFailed] = []
    specs = [serve("steady"), ProcessSpec("targets:die_after_ready", name="flaky")]
    with (
        pytest.raises(launch.LaunchFailed) as info,
        launch.start_group(
            specs,
            shutdown=FAST,
            backend=backend,  # type: ignore[arg-type]
            on_child_died=seen.append,
        ) as group,
    ):
        steady = group["steady"].pid
        group.wait(timeout=30)
    assert isinstance(info.value.first, launch.ChildDied)
    assert info.value.first.name == "flaky"
    assert seen and seen[0] is info.value
    assert steady is not None and not alive(steady)  # the sibling was torn down at once


def test_wait_times_out_while_running_and_returns_true_once_stopped() -> None:
    with launch.start_group([serve("a")]) as group:
        assert group.wait(timeout=0.2) is False
        group.stop()
        assert group.wait(timeout=5) is True
        group.stop()  # a second stop is harmless
        assert group["a"].state is launch.ChildState.EXITED


def test_the_body_exception_comes_out_unchanged_and_children_are_reaped() -> None:
    with pytest.raises(KeyError, match="mine"), launch.start_group([serve("a")]) as group:
        pid = group["a"].pid
        raise KeyError("mine")
    assert pid is not None and not alive(pid)


def test_several_threads_start_their_own_groups_at_once() -> None:
    def one(index: int) -> list[object]:
        specs = [serve(f"t{index}-{i}", init=0.3) for i in range(2)]
        with launch.start_group(specs, name=f"g{index}") as group:
            return [c.payload for c in group]

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, range(3)))
    assert [len(r) for r in results] == [2, 2, 2]


def test_from_a_thread_whose_asyncio_loop_is_running() -> None:
    """vLLM's AsyncLLM calls blocking startup code from inside a running loop."""

    async def main() -> object:
        assert asyncio.get_running_loop().is_running()
        with launch.start_group([serve("inside")]) as group:
            return group["inside"].payload

    payload = asyncio.run(main())
    assert isinstance(payload, dict) and "pid" in payload


def test_start_pipeline(backend: str) -> None:
    spec = PipelineSpec(
        [
            StageSpec("thinker", [serve("t0"), serve("t1")]),
            StageSpec("talker", [serve("k0")], after="thinker"),
        ],
        shutdown=FAST,
    )
    with launch.start_pipeline(spec, backend=backend) as running:  # type: ignore[arg-type]
        assert running["talker"]["k0"].state is launch.ChildState.READY
        pids = [c.pid for c in running.children]
        assert len(pids) == 3
        os.kill(pids[0], signal.SIGKILL)  # type: ignore[arg-type]
        with pytest.raises(launch.LaunchFailed) as info:
            running.wait(timeout=30)
    assert isinstance(info.value.first, launch.ChildDied)
    assert not any(alive(pid) for pid in pids if pid)


def test_the_failure_reaches_the_caller_once_and_the_callback_runs_in_the_loops_thread() -> None:
    threads: list[int] = []
    specs = [ProcessSpec("targets:die_after_ready", name="flaky")]
    with launch.start_group(
        specs, on_child_died=lambda exc: threads.append(threading.get_ident())
    ) as group:
        with pytest.raises(launch.LaunchFailed):
            group.wait(timeout=30)
        assert group.wait(timeout=1) is True  # reported once; leaving raises nothing more
    assert len(threads) == 1 and threads[0] != threading.get_ident()
