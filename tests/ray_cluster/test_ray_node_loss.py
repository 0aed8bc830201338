"""A node of the cluster dies under a placed group: its raylet is killed (a machine
dying) or stopped gracefully, with one child on it and siblings on other nodes.

The module has its own cluster (the fixture is module-scoped); each test adds its own
node (``node_c``) and removes it, so the cluster stays as other tests expect it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import psutil
import pytest
from conftest import NODE_CPUS, wait_ray_clean
from procs import alive
from ray_helpers import spec

import launch
from launch.integrations.ray import RayNode, RayPlacement

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("ray_cluster")]

# A child on each of node_a, node_b and the node that will be lost.
ACROSS = RayPlacement(
    [{"CPU": 1, "node_a": 0.5}, {"CPU": 1, "node_b": 0.5}, {"CPU": 1, "node_c": 0.5}],
    strategy="STRICT_SPREAD",
)
DETECT_S = 10.0  # remove_node → ChildDied at the caller (coarse: 2 busy cores)
GONE_S = 10.0  # ChildDied → every process of the group gone


@pytest.fixture
def extra_node(ray_cluster: Any) -> Iterator[Any]:
    """A node with the custom resource ``node_c``, removed after the test if the test
    did not remove it."""
    node = ray_cluster.add_node(num_cpus=NODE_CPUS, resources={"node_c": 1})
    ray_cluster.wait_for_nodes()
    try:
        yield node
    finally:
        if node in ray_cluster.worker_nodes:
            ray_cluster.remove_node(node)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


async def _gone(pids: list[int], within: float) -> None:
    deadline = time.monotonic() + within
    while any(alive(pid) for pid in pids):
        left = [pid for pid in pids if alive(pid)]
        assert time.monotonic() < deadline, f"still alive {within:g}s on: {left}"
        await anyio.sleep(0.05)


async def test_a_removed_node_is_a_child_died_naming_it_and_nothing_is_left(
    ray_cluster: Any, extra_node: Any
) -> None:
    """The node's raylet SIGKILLed, as a machine dying looks to Ray. (A graceful removal,
    SIGTERM first, goes the same way: the host actor's worker exits with its raylet and
    the driver sees its connection close.)"""
    specs = [
        spec("ray_targets:with_grandchild", "a"),
        spec("ray_targets:with_grandchild", "b"),
        spec("ray_targets:with_grandchild", "lost"),
    ]
    pids: list[int] = []
    hosts: list[int] = []
    lost_node: object = None
    removed_at = 0.0
    with pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="dp", placement=ACROSS) as group:
            for child in group:
                pids += _tree(child.pid or 0)
                pids.append(child.payload["grandchild"])  # it left the child's group
                parent = psutil.Process(child.pid or 0).parent()
                assert parent is not None and parent.cmdline()[0].startswith("ray::ChildHost")
                hosts.append(parent.pid)
            lost_node = group["lost"].node
            assert isinstance(lost_node, RayNode)
            assert lost_node.node_id == extra_node.node_id
            assert all(alive(pid) for pid in pids)
            removed_at = time.monotonic()
            await anyio.to_thread.run_sync(ray_cluster.remove_node, extra_node, False)
            await anyio.sleep(DETECT_S + 20)
            pytest.fail("the lost node went unnoticed")
    detected_s = time.monotonic() - removed_at
    assert detected_s < DETECT_S, detected_s
    first = info.value.first
    assert isinstance(first, launch.ChildDied), first
    assert first.name == "lost"
    assert isinstance(lost_node, RayNode)
    assert lost_node.node_id[:12] in str(first) and lost_node.ip in str(first)
    # every child, grandchild and host actor, on the lost node and on the others
    await _gone(pids + hosts, within=GONE_S)
    wait_ray_clean()


def _freeze(node: Any) -> list[psutil.Process]:
    """SIGSTOP every process of ``node``: its raylet, and the workers, actors and
    children under it (a machine that hangs, or is cut off the network)."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    frozen = []
    for proc in [raylet, *raylet.children(recursive=True)]:
        try:
            proc.suspend()
            frozen.append(proc)
        except psutil.NoSuchProcess:
            pass
    return frozen


async def test_a_frozen_node_is_lost_by_heartbeat_and_the_teardown_does_not_wait_for_it(
    ray_cluster: Any, extra_node: Any
) -> None:
    specs = [
        spec("ray_targets:with_grandchild", "a"),
        spec("ray_targets:with_grandchild", "b"),
        spec("ray_targets:with_grandchild", "lost"),
    ]
    pids: list[int] = []
    frozen: list[psutil.Process] = []
    frozen_at = 0.0
    try:
        with pytest.raises(launch.LaunchFailed) as info:
            async with launch.open_group(specs, name="dp", placement=ACROSS) as group:
                for child in group:
                    pids += _tree(child.pid or 0)
                    pids.append(child.payload["grandchild"])
                frozen_at = time.monotonic()
                frozen = _freeze(extra_node)
                await anyio.sleep(DETECT_S + 20)
                pytest.fail("the frozen node went unnoticed")
        left_s = time.monotonic() - frozen_at
        first = info.value.first
        assert isinstance(first, launch.ChildDied), first
        assert first.name == "lost" and "no heartbeat" in str(first)
        assert left_s < DETECT_S, left_s
        # Ray has let go of the actors and the placement group although the node, still
        # frozen, has not answered (before Ray's health checks could declare it dead).
        wait_ray_clean(timeout=GONE_S)
    finally:
        await anyio.to_thread.run_sync(ray_cluster.remove_node, extra_node, False)
        for proc in frozen:
            try:
                proc.resume()
            except psutil.NoSuchProcess:
                pass
    # The node back (SIGCONT): its raylet is gone, so are its workers; the host actor
    # finds the driver gone, the child its launcher gone: the lost child's tree goes too.
    await _gone(pids, within=GONE_S)
    wait_ray_clean()
