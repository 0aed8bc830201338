"""launch.integrations.vllm_dp.open_engine_cores against the real vllm package (CPU
build): vLLM's engine-core processes, DP coordinator, ZMQ handshakes and client, with the
stand-in worker. Run with ``nox -s vllm``."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import launch

pytestmark = pytest.mark.anyio


def dp_config(model: Path, dp: int = 2, tp: int = 1, **standin: Any) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=str(model),
        skip_tokenizer_init=True,
        data_parallel_size=dp,
        tensor_parallel_size=tp,
        distributed_executor_backend="launch.integrations.vllm.LaunchExecutor",
        enforce_eager=True,
        max_model_len=128,
        enable_prefix_caching=False,  # the stand-in has no KV cache
        worker_cls="standin_worker.StandInWorker",
        additional_config={"standin": standin},
    ).create_engine_config()


@pytest.mark.parametrize(
    ("dp", "tp", "names"),
    [
        (2, 1, ["DPCoordinator", "EngineCore_DP0", "EngineCore_DP1"]),
        (1, 2, ["EngineCore_DP0"]),  # TP only: vLLM's most common layout
    ],
)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # vLLM's client is asyncio's
async def test_dp_engines_start_as_one_group_and_serve_an_async_llm(
    model_dir: Path, anyio_backend: str, dp: int, tp: int, names: list[str]
) -> None:
    from vllm import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    from launch.integrations.vllm import zmq_addresses_of
    from launch.integrations.vllm_dp import open_engine_cores

    config = dp_config(model_dir, dp=dp, tp=tp, load_s=0.1)
    before = (config.parallel_config.assigned_physical_gpu_ids, config.parallel_config.world_size)
    async with open_engine_cores(config) as cores:
        assert [child.name for child in cores.group.children] == names
        engines = [c for c in cores.group.children if c.name.startswith("EngineCore")]
        assert [c.payload["dp_rank"] for c in engines] == list(range(dp))
        llm = AsyncLLM.from_vllm_config(config, client_addresses=cores.client_addresses)
        sockets = [
            address.removeprefix("ipc://")
            for address in zmq_addresses_of(cores.addresses)
            if address and address.startswith("ipc://")
        ]
        assert sockets and all(os.path.exists(path) for path in sockets)
        try:

            async def generate(prompt: list[int]) -> list[int]:
                final: Any = None
                params = SamplingParams(max_tokens=3, detokenize=False)
                async for output in llm.generate({"prompt_token_ids": prompt}, params, str(prompt)):
                    final = output
                return list(final.outputs[0].token_ids)

            # token 2 is the tiny Llama's EOS, so no prompt ends just before it
            answers = await asyncio.gather(*(generate([i * 10 + 5]) for i in range(4)))
            assert answers == [[6, 7, 8], [16, 17, 18], [26, 27, 28], [36, 37, 38]]
        finally:
            llm.shutdown()
    assert all(child.exitcode is not None for child in cores.group.children)
    # the addresses were launch's pick: their socket files go with the group
    assert [path for path in sockets if os.path.exists(path)] == []
    assert (
        config.parallel_config.assigned_physical_gpu_ids,
        config.parallel_config.world_size,
    ) == before


async def test_an_engine_failing_in_init_gives_the_workers_traceback_and_leaves_nothing(
    model_dir: Path,
) -> None:
    from launch.integrations.vllm_dp import open_engine_cores

    began = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with open_engine_cores(dp_config(model_dir, fail_dp_rank=1)):
            pytest.fail("the engines started")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "EngineCore_DP1"
    assert "engine 1: weights are corrupt" in str(first)
    assert "load_model" in (first.remote_traceback or "")  # the worker's own frames
    assert time.monotonic() - began < 120  # coarse: no handshake left waiting
    # nothing left: the no-leaked-process check of every test (conftest) enforces it


def test_vllms_own_engine_startup_says_see_root_cause_above(model_dir: Path) -> None:
    """The same failure through vLLM's launch_core_engines, for the comparison."""
    from vllm.v1.engine.async_llm import AsyncLLM

    async def start() -> None:
        AsyncLLM.from_vllm_config(dp_config(model_dir, fail_dp_rank=1))

    with pytest.raises(RuntimeError, match="See root cause above"):
        asyncio.run(start())
    time.sleep(1.0)  # vLLM SIGKILLs stragglers without reaping them at once


async def test_config_that_is_not_one_nodes_internal_dp_is_refused(model_dir: Path) -> None:
    from launch.integrations.vllm_dp import open_engine_cores

    config = dp_config(model_dir)
    config.parallel_config.data_parallel_size_local = 1
    with pytest.raises(ValueError, match="data_parallel_size_local=1 of data_parallel_size=2"):
        async with open_engine_cores(config):
            pytest.fail("started")


def test_each_engine_sees_only_its_own_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from launch.integrations import vllm_dp

    physical = [4, 5, 6, 7]
    monkeypatch.setattr(
        vllm_dp,
        "current_platform",
        SimpleNamespace(
            is_cuda_alike=lambda: True,
            device_control_env_var="CUDA_VISIBLE_DEVICES",
            device_id_to_physical_device_id=lambda i: physical[i],
        ),
    )
    assert vllm_dp.engine_device_env(0, 2) == {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert vllm_dp.engine_device_env(1, 2) == {"CUDA_VISIBLE_DEVICES": "6,7"}


def test_only_this_users_socket_files_are_removed(tmp_path: Path) -> None:
    import socket

    from launch.integrations.vllm import remove_ipc_sockets

    def bound(name: str) -> Path:
        path = tmp_path / name
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))  # the file stays after close, as ZMQ's does
        return path

    ours, regular, link = bound("ours"), tmp_path / "regular", tmp_path / "link"
    regular.write_text("not a socket")
    link.symlink_to(bound("target"))
    others = bound("others") if os.getuid() == 0 else None
    if others is not None:
        os.chown(others, 65534, 65534)
    addresses = [f"ipc://{p}" for p in (ours, regular, link, others) if p is not None]
    remove_ipc_sockets([*addresses, None, "tcp://127.0.0.1:5555", f"ipc://{tmp_path}/gone"])
    assert not ours.exists()
    assert regular.exists() and link.is_symlink() and (tmp_path / "target").exists()
    assert others is None or others.exists()
