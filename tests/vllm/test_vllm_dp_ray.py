"""open_engine_cores with a RayPlacement: vLLM's data-parallel engine cores on two nodes of
a simulated Ray cluster (tests/ray_cluster's: a head and two nodes, ``node_a`` and
``node_b``, on this machine), with the stand-in worker. Run with ``nox -s vllm`` (which
installs ray); skipped without ray.

The engines are launch children inside Ray actors on their nodes; the DP coordinator stays
on the driver. Every address an engine reaches is TCP on the driver's node IP.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="the placed-engine tests need ray")

import launch  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "ray_cluster_fixtures", Path(__file__).parent.parent / "ray_cluster" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cluster)

# The cluster of tests/ray_cluster, and its leak check that leaves Ray's own processes
# out (a test's engines, their workers and the actors hosting them still count).
ray_cluster = _cluster.ray_cluster
no_leaked_processes = _cluster.no_leaked_processes

# a cluster start and two vLLM engines as fresh interpreters, on 2 cores shared with it
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.usefixtures("ray_cluster"),
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

NODES = ("node_a", "node_b")


def wait_ray_clean(timeout: float = 20.0) -> None:
    """Wait until no actor lives and no placement group is left; fail naming them. Read
    from the GCS, not through the state API: that needs the cluster's dashboard, which
    does not start while another cluster on this machine holds its port."""
    from ray._private.state import actors
    from ray.util import placement_group_table

    deadline = time.monotonic() + timeout
    while True:
        live = [a["ActorClassName"] for a in actors().values() if a["State"] != "DEAD"]
        groups = [g for g, info in placement_group_table().items() if info["state"] != "REMOVED"]
        if not live and not groups:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left in Ray: actors {live}, placement groups {groups}")
        time.sleep(0.2)


def placement() -> Any:
    from launch.integrations.ray import RayPlacement

    # no GPU in a bundle: the stand-in worker needs none, and Ray sets no device variable
    return RayPlacement(
        [{"CPU": 1, node: 0.5} for node in NODES], strategy="STRICT_SPREAD", placement_timeout=60
    )


def dp_config(model: Path, **standin: Any) -> Any:
    from test_vllm_dp import dp_config

    return dp_config(model, dp=2, tp=1, **standin)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # vLLM's client is asyncio's
async def test_engines_on_two_nodes_serve_an_async_llm_on_each_rank(
    model_dir: Path, anyio_backend: str
) -> None:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    from launch.integrations.ray import RayNode
    from launch.integrations.vllm_dp import COORDINATOR, engine_name, open_engine_cores

    config = dp_config(model_dir, load_s=0.1)
    driver_ip = ray.util.get_node_ip_address()
    async with open_engine_cores(config, placement=placement()) as cores:
        group = cores.group
        assert [child.name for child in group] == [COORDINATOR, engine_name(0), engine_name(1)]
        assert group[COORDINATOR].node is None  # the coordinator stays on the driver
        nodes = [group[engine_name(rank)].node for rank in range(2)]
        assert all(isinstance(node, RayNode) for node in nodes)
        assert [node.node_id for node in nodes] == [  # type: ignore[union-attr]
            _cluster.node_with(name) for name in NODES
        ]
        assert [group[engine_name(r)].payload["dp_rank"] for r in range(2)] == [0, 1]
        for rank in range(2):
            spec = group[engine_name(rank)].spec
            assert spec.env == {}  # no device variable from the driver: the bundle's
            assert spec.kwargs["local_dp_rank"] == 0
            assert spec.kwargs["handshake_address"].startswith(f"tcp://{driver_ip}:")
        # what engines on other hosts reach: TCP on the driver's address, no IPC path
        addresses = cores.addresses
        for address in (
            *addresses.inputs,
            *addresses.outputs,
            addresses.coordinator_input,
            addresses.coordinator_output,
        ):
            assert address is not None and address.startswith(f"tcp://{driver_ip}:")

        llm = AsyncLLM.from_vllm_config(config, client_addresses=cores.client_addresses)
        try:

            async def generate(prompt: list[int], rank: int) -> list[int]:
                final: Any = None
                params = SamplingParams(max_tokens=3, detokenize=False)
                async for output in llm.generate(
                    {"prompt_token_ids": prompt},
                    params,
                    f"{rank}-{prompt}",
                    data_parallel_rank=rank,
                ):
                    final = output
                return list(final.outputs[0].token_ids)

            # token 2 is the tiny Llama's EOS, so no prompt ends just before it
            answers = await asyncio.gather(generate([5], 0), generate([15], 1))
            assert answers == [[6, 7, 8], [16, 17, 18]]
        finally:
            llm.shutdown()
    assert all(child.exitcode is not None for child in cores.group)
    wait_ray_clean()


# trio here, asyncio above (vLLM's client): each backend once, in the time of two tests
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_worker_failing_on_one_node_gives_its_traceback_and_leaves_nothing(
    model_dir: Path, anyio_backend: str
) -> None:
    from launch.integrations.vllm_dp import engine_name, open_engine_cores

    with pytest.raises(launch.LaunchFailed) as info:
        async with open_engine_cores(dp_config(model_dir, fail_dp_rank=1), placement=placement()):
            pytest.fail("the engines started")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == engine_name(1)
    assert "engine 1: weights are corrupt" in str(first)
    assert "load_model" in (first.remote_traceback or "")  # the worker's own frames
    assert [f.name for f in info.value.exceptions] == [engine_name(1)]  # the rest: collateral
    # no actor and no placement group left; no process either (the module's leak check)
    wait_ray_clean()


async def test_what_cannot_work_across_nodes_is_refused_naming_the_key(model_dir: Path) -> None:
    from launch.integrations.ray import RayPlacement
    from launch.integrations.vllm_dp import engine_addresses, open_engine_cores

    config = dp_config(model_dir)
    three = RayPlacement([{"CPU": 1}] * 3)
    with pytest.raises(ValueError, match=r"3 bundles for data_parallel_size=2"):
        async with open_engine_cores(config, placement=three):
            pytest.fail("started")
    with pytest.raises(ValueError, match=r"addresses="):
        async with open_engine_cores(
            config, placement=placement(), addresses=engine_addresses(config)
        ):
            pytest.fail("started")
    config.parallel_config.data_parallel_size_local = 1
    with pytest.raises(ValueError, match=r"data_parallel_size_local=1 .*with a placement"):
        async with open_engine_cores(config, placement=placement()):
            pytest.fail("started")
    wait_ray_clean()
