"""Contract tests of open_group, for every start method, under both backends."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
import trio.testing
from procs import alive

import launch
from launch import ProcessSpec, ShutdownPolicy
from launch._spec import START_METHODS

pytestmark = pytest.mark.anyio

FAST = ShutdownPolicy(stop_timeout=1.0, term_timeout=1.0, kill_timeout=1.0)


def spec(target: str, name: str, method: str, **kw: object) -> ProcessSpec:
    kwargs = kw.pop("kwargs", {})
    return ProcessSpec(f"targets:{target}", name=name, kwargs=kwargs, start_method=method, **kw)  # type: ignore[arg-type]


async def test_eight_one_second_inits_start_concurrently(start_method: str) -> None:
    specs = [spec("serve", f"w{i}", start_method, kwargs={"init": 1.0}) for i in range(8)]
    started = time.monotonic()
    async with launch.open_group(specs, name="tp") as group:
        elapsed = time.monotonic() - started
        assert [c.state for c in group.children] == [launch.ChildState.READY] * 8
        pids = [c.pid for c in group.children]
        assert len(set(pids)) == 8
        assert all(alive(pid) for pid in pids)
        assert group["w3"].payload == {"pid": group["w3"].pid}
        assert group["w3"].phase == "init"
    # eight inits of 1 s each: sequential would be 8 s, two at a time 4 s; the bound is
    # coarse on purpose (eight interpreters starting on a loaded 2-core machine)
    assert elapsed < 3.5, f"all READY after {elapsed:.2f}s"
    assert not any(alive(pid) for pid in pids)
    assert all(c.state is launch.ChildState.EXITED for c in group.children)
    assert all(c.exitcode == 0 for c in group.children)  # cooperative stop, clean exit


async def test_crash_before_ready_reports_the_childs_traceback(start_method: str) -> None:
    specs = [spec("serve", f"w{i}", start_method, kwargs={"init": 5.0}) for i in range(3)]
    specs.append(spec("crash", "w3", start_method, kwargs={"delay": 0.2}))
    started = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="tp"):
            pytest.fail("the block must not be entered")
    assert time.monotonic() - started < 4.0  # siblings were not waited for (5 s init)
    error = info.value
    assert len(error.exceptions) == 1, "siblings torn down as collateral are not failures"
    first = error.first
    assert isinstance(first, launch.ChildCrashed)
    assert (first.name, first.group, first.exitcode, first.phase) == ("w3", "tp", 1, "load_model")
    assert first.remote_type == "RuntimeError"
    assert first.remote_traceback is not None and "in crash" in first.remote_traceback
    text = str(first)
    assert "'w3'" in text and "'load_model'" in text and "weights file is corrupt" in text
    assert "raise RuntimeError" in text  # the tail of its own traceback
    assert "'w3'" in str(error)


async def test_exit_zero_before_ready_is_a_crash(start_method: str) -> None:
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec("exit_zero", "cfg", start_method)]):
            pass
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed)
    assert first.exitcode == 0 and first.phase == "configure"


async def test_ready_timeout_names_the_last_phase(start_method: str) -> None:
    specs = [spec("hang", "w0", start_method, ready_timeout=0.5), spec("serve", "w1", start_method)]
    started = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, shutdown=FAST):
            pass
    assert time.monotonic() - started < 4.0
    first = info.value.first
    assert isinstance(first, launch.ReadyTimeout)
    assert first.phase == "nccl_init" and first.name == "w0"
    assert "'nccl_init'" in str(first) and "ready_timeout=0.5" in str(first)
    assert len(info.value.exceptions) == 1


async def test_death_after_ready_cancels_the_block(start_method: str) -> None:
    specs = [
        spec("serve", "w0", start_method),
        spec("die_after_ready", "w1", start_method, kwargs={"code": 3}),
    ]
    reached_end = False
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs) as group:
            pids = [c.pid for c in group.children]
            await anyio.sleep(30)
            reached_end = True
    assert not reached_end
    first = info.value.first
    assert isinstance(first, launch.ChildDied)
    assert (first.name, first.exitcode) == ("w1", 3)
    assert len(info.value.exceptions) == 1
    assert not any(alive(pid) for pid in pids)


async def test_exception_after_ready_carries_its_traceback(start_method: str) -> None:
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec("raise_after_ready", "w0", start_method)]):
            await anyio.sleep(30)
    first = info.value.first
    assert isinstance(first, launch.ChildDied)
    assert first.remote_type == "ValueError" and "lost connection to peer" in str(first)


async def test_sigterm_ignoring_child_is_killed_within_budget(start_method: str) -> None:
    policy = ShutdownPolicy(stop_timeout=0.3, term_timeout=0.3, kill_timeout=1.0)
    async with launch.open_group(
        [spec("ignore_sigterm", "stubborn", start_method)], shutdown=policy
    ) as g:
        pid = g["stubborn"].pid
        left = time.monotonic()
    took = time.monotonic() - left
    assert not alive(pid)
    assert g["stubborn"].exitcode == -9
    assert 0.5 < took < policy.budget + 1.0
    assert g.unreaped == []


async def test_outer_cancel_during_startup_leaves_nothing(start_method: str) -> None:
    specs = [spec("serve", f"w{i}", start_method, kwargs={"init": 30.0}) for i in range(4)]
    started = time.monotonic()
    with anyio.move_on_after(0.5) as scope:
        async with launch.open_group(specs):
            pytest.fail("must not be entered")
    assert scope.cancelled_caught
    assert time.monotonic() - started < 3.0
    # the no-leaked-process fixture checks that all four are gone


async def test_outer_cancel_while_running(start_method: str) -> None:
    with anyio.move_on_after(0.5) as scope:
        async with launch.open_group([spec("serve", "w0", start_method)]) as group:
            pid = group["w0"].pid
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert not alive(pid)


async def test_body_exception_propagates_unwrapped(start_method: str) -> None:
    with pytest.raises(KeyError, match="nope"):
        async with launch.open_group([spec("serve", "w0", start_method)]) as group:
            pid = group["w0"].pid
            raise KeyError("nope")
    assert not alive(pid)


async def test_cooperative_stop_lets_the_child_finish(start_method: str, tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    async with launch.open_group(
        [spec("stop_then_exit", "w0", start_method, kwargs={"marker": str(marker)})]
    ):
        pass
    assert marker.read_text() == "stopped cooperatively"


async def test_unpicklable_kwargs_fail_clearly_and_start_nothing(start_method: str) -> None:
    specs = [
        spec("serve", "w0", start_method),
        spec("serve", "w1", start_method, kwargs={"payload": lambda: 1}),
    ]
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs):
            pass
    first = info.value.first
    assert isinstance(first, launch.SpawnFailed)
    assert first.name == "w1" and first.pid is None
    assert "could not be pickled" in str(first)


async def test_unpicklable_ready_payload_is_reported(start_method: str) -> None:
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec("bad_payload", "w0", start_method)]):
            pass
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed)
    assert "not picklable" in str(first)


async def test_env_is_applied_in_each_child_and_parent_untouched(start_method: str) -> None:
    before = dict(os.environ)
    specs = [
        spec("report_env", f"w{i}", start_method, env={"CUDA_VISIBLE_DEVICES": str(i)})
        for i in range(8)
    ]
    async with launch.open_group(specs) as group:
        seen = [c.payload["value"] for c in group.children]
    assert seen == [str(i) for i in range(8)]
    assert dict(os.environ) == before


async def test_callable_target(start_method: str) -> None:
    from targets import callable_target

    spec_ = ProcessSpec(callable_target, name="c", kwargs={"value": 21}, start_method=start_method)  # type: ignore[arg-type]
    async with launch.open_group([spec_]) as group:
        assert group["c"].payload == 42


async def test_lambda_target_is_a_spawn_failure(start_method: str) -> None:
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(
            [ProcessSpec(lambda: None, name="l", start_method=start_method)]
        ):  # type: ignore[arg-type]
            pass
    assert isinstance(info.value.first, launch.SpawnFailed)


async def test_unimportable_target_is_a_crash_with_its_traceback(start_method: str) -> None:
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(
            [ProcessSpec("no_such_module:run", name="x", start_method=start_method)]
        ):
            pass
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed)
    assert first.remote_type == "ModuleNotFoundError" and "no_such_module" in str(first)


async def test_ready_twice_is_refused(start_method: str) -> None:
    async with launch.open_group([spec("ready_twice", "w0", start_method)]) as group:
        await anyio.sleep(0.2)
        assert group["w0"].state is launch.ChildState.READY  # the second ready() did not kill it


# a fork of this process has the test's modules: only the fresh start methods can tell
@pytest.mark.parametrize("start_method", [m for m in START_METHODS if m != "fork"])
async def test_child_side_imports_only_the_standard_library(start_method: str) -> None:
    async with launch.open_group([spec("report_modules", "w0", start_method)]) as group:
        assert group["w0"].payload == []


async def test_mixed_start_methods_in_one_group() -> None:
    specs = [spec("serve", m, m) for m in START_METHODS]
    async with launch.open_group(specs) as group:
        assert all(c.ready for c in group.children)


async def test_a_crash_is_acted_on_before_the_child_has_finished_exiting(
    grace_clock: trio.testing.MockClock | None,
) -> None:
    """The child's exception report starts the teardown; a slow interpreter shutdown
    (10 s of atexit here) delays neither the error nor the siblings' teardown. Under trio
    the lingering child's stop_timeout passes in virtual time (no ready_timeout: nothing
    that a slow start could be jumped past)."""
    specs = [
        spec("serve", "steady", "spawn", ready_timeout=None),
        spec(
            "crash_then_linger", "slow-exit", "spawn", kwargs={"linger": 10.0}, ready_timeout=None
        ),
    ]
    began = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="g", shutdown=FAST):
            pytest.fail("startup must fail")
    assert time.monotonic() - began < 8.0  # not the 10 s the exit would take
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "slow-exit"
    assert "weights file is corrupt" in (first.remote_traceback or "")


@pytest.mark.parametrize("inner", START_METHODS)
async def test_a_forked_child_can_start_a_group_of_its_own(inner: str) -> None:
    """Regression (seen with vLLM's engine cores forked by launch on H200s): the fork
    happens while the spawner thread holds the launch lock; the child inherited it held
    by a thread it does not have, and its own first spawn waited forever."""
    spec = ProcessSpec(
        "targets:nested_group", name="engine", kwargs={"method": inner}, start_method="fork",
        ready_timeout=30.0,
    )  # fmt: skip
    with anyio.fail_after(60):
        async with launch.open_group([spec]) as group:
            grandchild = group["engine"].payload["grandchild"]
            assert alive(grandchild)
    assert not alive(grandchild)
