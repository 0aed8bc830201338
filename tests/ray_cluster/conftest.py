"""A simulated Ray cluster on this machine for the placement tests (``nox -s ray``).

A head and two worker nodes, each with a custom resource naming it (``head``, ``node_a``,
``node_b``), are started once per test module by :func:`ray_cluster`; this process connects
to it as the driver. The module is skipped when ray is not installed.

The leak check here is launch's own (``no_leaked_processes``), less Ray's processes:
the cluster's daemons and the worker processes Ray starts and keeps on its own (idle
workers, agents) are the session fixture's, not a test's. A test's children, their guards
and grandchildren, and the actors hosting them (``ray::ChildHost``) still count.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the Ray placement tests need ray (pip install '.[ray]')")

from launch.testing._leaks import LeakedProcesses, ProcessWatch  # noqa: E402

HERE = Path(__file__).parent
NODE_CPUS = 2
RAY_PACKAGE = os.path.dirname(ray.__file__)


def _is_rays_own(proc: Any) -> bool:
    """A Ray daemon or a worker Ray keeps on its own; a host actor (``ChildHost``) or
    anything launch started is not."""
    try:
        cmdline = proc.cmdline()
    except Exception:
        return False
    title = " ".join(cmdline)
    if title.startswith("ray::"):
        return "ChildHost" not in title
    return any(part.startswith(RAY_PACKAGE) for part in cmdline[:3])


class _RayAwareWatch(ProcessWatch):
    def leftovers(self) -> list[Any]:
        return [proc for proc in super().leftovers() if not _is_rays_own(proc)]


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    """launch's no-leaked-process check, not counting Ray's own processes."""
    watch = _RayAwareWatch()
    yield
    try:
        watch.check()
    except LeakedProcesses as exc:
        pytest.fail(str(exc))


# Module scope: the cluster is gone before other modules (the bench's Ray peer) start Ray.
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A head and two nodes (``node_a``, ``node_b``), this process connected as driver."""
    from ray.cluster_utils import Cluster

    sys.path.insert(0, str(HERE))  # ray_targets, for the children (the boot carries sys.path)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": NODE_CPUS, "resources": {"head": 1}},
    )
    try:
        for name in ("node_a", "node_b"):
            cluster.add_node(num_cpus=NODE_CPUS, resources={name: 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_with(resource: str) -> str:
    """The id of the live node that has ``resource``."""
    for node in ray.nodes():
        if node["Alive"] and resource in node["Resources"]:
            return str(node["NodeID"])
    raise LookupError(resource)


def live_actors() -> list[Any]:
    """Actors of the cluster that are not dead."""
    from ray.util.state import list_actors

    return [a for a in list_actors(limit=1000) if a.state != "DEAD"]


def live_placement_groups() -> list[str]:
    """Placement groups that are not removed."""
    from ray.util import placement_group_table

    return [pg_id for pg_id, info in placement_group_table().items() if info["state"] != "REMOVED"]


def wait_ray_clean(timeout: float = 20.0) -> None:
    """Wait until no actor lives and no placement group is left; fail naming them."""
    deadline = time.monotonic() + timeout
    while True:
        actors, groups = live_actors(), live_placement_groups()
        if not actors and not groups:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left in Ray: actors {actors}, placement groups {groups}")
        time.sleep(0.2)
