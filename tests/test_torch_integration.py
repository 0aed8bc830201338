"""launch.integrations.torch: real gloo process groups formed before READY."""

from __future__ import annotations

import pytest

import launch
from launch.integrations.torch import free_ports, process_group_specs

pytest.importorskip("torch")
pytestmark = pytest.mark.anyio


async def test_gloo_group_forms_before_ready() -> None:
    specs = process_group_specs("tp", 3, env={"OMP_NUM_THREADS": "1"})
    assert [s.name for s in specs] == ["tp-0", "tp-1", "tp-2"]
    async with launch.open_group(specs, name="tp") as group:
        payloads = [child.payload for child in group]
        assert [p["rank"] for p in payloads] == [0, 1, 2]
        assert {p["all_reduce"] for p in payloads} == {6.0}  # 1 + 2 + 3
        assert {p["backend"] for p in payloads} == {"gloo"}
        phases = [name for name, _ in group["tp-1"].times.phases]
        assert phases == ["import torch", "init_process_group", "barrier", "all_reduce"]


async def test_a_missing_rank_times_out_naming_the_phase() -> None:
    # rank 1 of 2 is never started: rank 0 waits in init_process_group until its deadline
    spec = process_group_specs("tp", 2, ready_timeout=5.0)[0]
    # blocked in C++, the child cannot act on SIGTERM: the teardown's SIGKILL ends it
    quick = launch.ShutdownPolicy(stop_timeout=0.5, term_timeout=0.5, kill_timeout=1.0)
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group([spec], name="tp", shutdown=quick):
            pytest.fail("a group of one out of two ranks cannot come up")
    first = info.value.first
    assert isinstance(first, launch.ReadyTimeout)
    assert first.phase == "init_process_group"


def test_free_ports_are_distinct() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        process_group_specs("tp", 0)
