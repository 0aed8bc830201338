"""open_pipeline: concurrent stages, `after`, device locks, the narrow launch lock,
device visibility, and first-failure teardown across stages. Both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from procs import alive

import launch
from launch import PipelineSpec, ProcessSpec, ShutdownPolicy, StageSpec
from launch._devicelock import acquire_device_locks

pytestmark = pytest.mark.anyio

FAST = ShutdownPolicy(stop_timeout=1.0, term_timeout=1.0, kill_timeout=1.0)
SCRIPTS = Path(__file__).parent / "scripts"


def child(target: str, name: str, **kwargs: Any) -> ProcessSpec:
    method = kwargs.pop("start_method", "spawn")
    return ProcessSpec(f"targets:{target}", name=name, kwargs=kwargs, start_method=method)


def pipeline(tmp_path: Path, *stages: StageSpec, **kw: Any) -> PipelineSpec:
    return PipelineSpec(list(stages), lock_dir=tmp_path / "locks", shutdown=FAST, **kw)


async def test_stages_start_concurrently(tmp_path: Path) -> None:
    spec = pipeline(
        tmp_path,
        StageSpec("thinker", [child("serve", f"t{i}", init=2.0) for i in range(2)], devices=(0, 1)),
        StageSpec("talker", [child("serve", "k0", init=2.0)], devices=(2,)),
        StageSpec("vocoder", [child("serve", "v0", init=2.0)], devices=(3,)),
    )
    started = time.monotonic()
    async with launch.open_pipeline(spec) as running:
        elapsed = time.monotonic() - started
        assert isinstance(running["talker"], launch.Group)
        assert [g.name for g in running] == ["thinker", "talker", "vocoder"]
        assert running["thinker"]["t1"].payload == {"pid": running["thinker"]["t1"].pid}
        pids = [c.pid for c in running.children]
        assert all(alive(pid) for pid in pids)
        assert all(running.is_ready(name) for name in ("thinker", "talker", "vocoder"))
    # sequential would take 6 s; the margin is for a loaded 2-core machine
    assert elapsed < 4.0, f"three stages of 2 s each took {elapsed:.2f}s: not concurrent"
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(KeyError, match="no stage 'nope'"):
        running["nope"]


async def test_after_orders_stages(tmp_path: Path) -> None:
    spec = pipeline(
        tmp_path,
        StageSpec("talker", [child("serve", "k0", init=0.3)], after=("thinker",)),
        StageSpec("thinker", [child("serve", f"t{i}", init=0.3) for i in range(2)]),
        StageSpec("vocoder", [child("serve", "v0", init=0.3)], after="talker"),
    )
    assert [s.name for s in spec.order()] == ["thinker", "talker", "vocoder"]
    async with launch.open_pipeline(spec) as running:
        thinker_ready = max(c.times.ready or 0 for c in running["thinker"])
        talker = running["talker"]["k0"].times
        vocoder = running["vocoder"]["v0"].times
        assert talker.spawn_requested is not None and talker.ready is not None
        assert talker.spawn_requested >= thinker_ready
        assert vocoder.spawn_requested is not None and vocoder.spawn_requested >= talker.ready


async def test_stages_sharing_a_device_initialize_one_after_another(tmp_path: Path) -> None:
    spec = pipeline(
        tmp_path,
        StageSpec("talker", [child("serve", "k0", init=0.5)], devices=(2,)),
        StageSpec("vocoder", [child("serve", "v0", init=0.5)], devices=("2",)),
        StageSpec("thinker", [child("serve", "t0", init=0.5)], devices=(0, 1)),
    )
    async with launch.open_pipeline(spec) as running:
        k, v, t = (running[s].children[0].times for s in ("talker", "vocoder", "thinker"))
        first, second = sorted((k, v), key=lambda times: times.spawn_requested or 0)
        assert first.ready is not None and second.spawn_requested is not None
        assert second.spawn_requested >= first.ready  # device 2: one after the other
        assert t.spawn_requested is not None and t.spawn_requested < first.ready  # disjoint
        waits = running.device_lock_waits
        assert waits.keys() == {"talker", "vocoder", "thinker"}
        # the device lock is released once the stage is READY, not when it stops
        locks = await acquire_device_locks(
            ["0", "1", "2"], stage="probe", lock_dir=tmp_path / "locks", timeout=1.0
        )
        locks.release()


async def test_second_stage_spawns_while_first_handshake_is_pending(tmp_path: Path) -> None:
    """Regression (vLLM-Omni held its stage launch lock across the handshake): each
    child waits for the other to have started before it says READY, so both only come
    up if neither handshake holds the launch lock."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    spec = pipeline(
        tmp_path,
        StageSpec("thinker", [child("meet", "t0", mine=a, theirs=b, timeout=10.0)]),
        StageSpec("talker", [child("meet", "k0", mine=b, theirs=a, timeout=10.0)]),
    )
    async with launch.open_pipeline(spec) as running:
        t0 = running["thinker"]["t0"].times
        k0 = running["talker"]["k0"].times
        assert t0.ready is not None and k0.ready is not None
        assert k0.spawned is not None and k0.spawned < t0.ready
        assert t0.spawned is not None and t0.spawned < k0.ready


async def test_devices_and_stage_env_reach_the_child(tmp_path: Path, start_method: str) -> None:
    keys = ["CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "STAGE_FLAG", "OWN"]
    own = ProcessSpec(
        "targets:report_envs",
        name="own",
        kwargs={"keys": keys},
        env={"CUDA_VISIBLE_DEVICES": "1", "OWN": "x"},
        start_method=start_method,  # type: ignore[arg-type]
    )
    spec = pipeline(
        tmp_path,
        StageSpec(
            "thinker",
            [child("report_envs", "t0", keys=keys, start_method=start_method), own],
            devices=(0, 1),
            env={"STAGE_FLAG": "on"},
        ),
        device_env=("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
    )
    before = dict(os.environ)
    async with launch.open_pipeline(spec) as running:
        assert running["thinker"]["t0"].payload == {
            "CUDA_VISIBLE_DEVICES": "0,1",
            "HIP_VISIBLE_DEVICES": "0,1",
            "STAGE_FLAG": "on",
            "OWN": None,
        }
        # a child's own env wins over the stage's devices
        assert running["thinker"]["own"].payload["CUDA_VISIBLE_DEVICES"] == "1"
        assert running["thinker"]["own"].payload["OWN"] == "x"
        assert dict(os.environ) == before  # the parent's env is restored after the spawn
    assert dict(os.environ) == before


async def test_failure_in_one_stage_tears_down_every_stage(tmp_path: Path) -> None:
    spec = pipeline(
        tmp_path,
        StageSpec("thinker", [child("serve", f"t{i}", init=0.1) for i in range(2)], devices=(0,)),
        StageSpec("talker", [child("crash", "k0", delay=0.5)], devices=(1,)),
        StageSpec("vocoder", [child("serve", "v0", init=30.0)], devices=(2,)),
    )
    started = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_pipeline(spec):
            pytest.fail("the block must not run")
    elapsed = time.monotonic() - started
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed)
    assert (first.group, first.name, first.phase) == ("talker", "k0", "load_model")
    assert (
        first.remote_traceback is not None and "weights file is corrupt" in first.remote_traceback
    )
    assert len(info.value.exceptions) == 1  # torn-down siblings are not failures
    assert "pipeline 'pipeline' failed" in str(info.value)
    assert elapsed < 5.0
    # every lock was released: the devices can be taken again at once
    locks = await acquire_device_locks(
        ["0", "1", "2"], stage="probe", lock_dir=tmp_path / "locks", timeout=0.5
    )
    locks.release()


async def test_child_dying_while_up_cancels_the_block(tmp_path: Path) -> None:
    spec = pipeline(
        tmp_path,
        StageSpec("thinker", [child("serve", "t0")]),
        StageSpec("talker", [child("die_after_ready", "k0", after=0.3, code=7)]),
    )
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_pipeline(spec) as running:
            pid = running["thinker"]["t0"].pid
            await anyio.sleep(30)
    first = info.value.first
    assert isinstance(first, launch.ChildDied)
    assert (first.group, first.exitcode) == ("talker", 7)
    assert not alive(pid)


async def test_callers_exception_propagates_unwrapped(tmp_path: Path) -> None:
    spec = pipeline(
        tmp_path, StageSpec("a", [child("serve", "a0")]), StageSpec("b", [child("serve", "b0")])
    )
    with pytest.raises(ZeroDivisionError):
        async with launch.open_pipeline(spec) as running:
            pids = [c.pid for c in running.children]
            1 / 0  # noqa: B018
    assert not any(alive(pid) for pid in pids)


async def test_cancel_while_waiting_for_a_device_lock(tmp_path: Path) -> None:
    locks = await acquire_device_locks(["0"], stage="x", lock_dir=tmp_path / "locks", timeout=1)
    spec = pipeline(tmp_path, StageSpec("a", [child("serve", "a0")], devices=(0,)))
    try:
        started = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            async with launch.open_pipeline(spec):
                pytest.fail("device 0 is held: the stage must not start")
        assert scope.cancelled_caught
        assert time.monotonic() - started < 1.0
    finally:
        locks.release()


def _hold_device(lock_dir: Path, device: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "hold_device.py"), str(lock_dir), device],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


async def test_device_lock_timeout_names_device_and_holder(tmp_path: Path) -> None:
    holder = _hold_device(tmp_path / "locks", "3")
    try:
        spec = pipeline(
            tmp_path,
            StageSpec("talker", [child("serve", "k0")], devices=(3,)),
            StageSpec("thinker", [child("serve", "t0", init=0.1)], devices=(0,)),
            device_lock_timeout=0.5,
        )
        with pytest.raises(launch.LaunchFailed) as info:
            async with launch.open_pipeline(spec):
                pytest.fail("device 3 is held: the pipeline must not come up")
        first = info.value.first
        assert isinstance(first, launch.DeviceLockTimeout)
        assert (first.name, first.device, first.holder) == ("talker", "3", holder.pid)
        assert f"held by pid {holder.pid}" in str(first)
        assert "device '3'" in str(first)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)


def test_two_pipelines_in_two_processes_take_turns_on_a_device(tmp_path: Path) -> None:
    outs = [tmp_path / "one.json", tmp_path / "two.json"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPTS / "device_stage.py"),
                str(tmp_path / "locks"),
                str(out),
                "1.0",
            ]
        )
        for out in outs
    ]
    for proc in procs:
        assert proc.wait(60) == 0
    first, second = sorted(
        (json.loads(out.read_text()) for out in outs), key=lambda t: t["spawn_requested"]
    )
    # the second process spawned only once the first one's stage was READY
    assert second["spawn_requested"] >= first["ready"]
