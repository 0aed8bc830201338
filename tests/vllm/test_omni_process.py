"""launch.integrations.omni.open_omni_stages against the real vLLM-Omni 0.22.0 stage
process (``StageEngineCoreProc``) on vllm 0.22.1, CPU, with the stand-in worker: Omni's
own engine core, handshake and stage client, no model. Run by ``nox -s omni``, which puts
vLLM's CPU platform on ``PYTHONPATH`` as a platform plugin (tests/vllm/omni_cpu_platform)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("vllm_omni") is None:
    pytest.skip("vllm-omni is not installed (nox -s omni installs it)", allow_module_level=True)

import anyio
import anyio.to_thread

import launch
from launch.integrations.omni import OmniStageLaunch, open_omni_stages

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]


@pytest.fixture(autouse=True)
def cpu_platform() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM has no platform here: run through nox -s omni (its CPU plugin)")


def stage_config(
    model: Path, worker: str = "standin_worker.StandInWorker", backend: str = "mp", **standin: Any
) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(
        model=str(model),
        distributed_executor_backend=backend,
        skip_tokenizer_init=True,
        enforce_eager=True,
        max_model_len=128,
        enable_prefix_caching=False,  # the stand-in has no KV cache
        worker_cls=worker,
        additional_config={"standin": standin},
    ).create_engine_config()


def metadata(stage_id: int) -> Any:
    from vllm_omni.engine.stage_init_utils import StageMetadata

    return StageMetadata(
        stage_id=stage_id, stage_type="llm", engine_output_type=None, is_comprehension=False,
        requires_multimodal_data=False, engine_input_source=[], final_output=True,
        final_output_type="text", default_sampling_params=None, custom_process_input_func=None,
        model_stage=None, runtime_cfg=None,
    )  # fmt: skip


async def generate(client: Any, request_id: str, prompt: list[int], n: int) -> list[int]:
    """One request through Omni's stage client (vLLM's engine-core wire protocol)."""
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreRequest

    params = SamplingParams(max_tokens=n, detokenize=False)
    await client.add_request_async(
        EngineCoreRequest(
            request_id=request_id,
            prompt_token_ids=prompt,
            mm_features=None,
            sampling_params=params,
            pooling_params=None,
            arrival_time=time.time(),
            lora_request=None,
            cache_salt=None,
            data_parallel_rank=None,
        )
    )
    tokens: list[int] = []
    with anyio.fail_after(60):
        while len(tokens) < n:
            outputs = await client.get_output_async()
            for output in outputs.outputs:
                tokens += output.new_token_ids
    return tokens


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_stages_start_concurrently_and_serve_omnis_own_client(model_dir: Path) -> None:
    stages = [
        OmniStageLaunch("thinker", stage_config(model_dir, load_s=0.5), stage_id=0, devices=[0]),
        OmniStageLaunch("talker", stage_config(model_dir, load_s=0.5), stage_id=1, devices=[1]),
    ]
    async with open_omni_stages(stages, ready_timeout=300) as running:
        children = [running.pipeline[name][name] for name in ("thinker", "talker")]
        # concurrent: both were spawned before either was READY
        assert max(c.times.spawned or 0 for c in children) < min(
            c.times.ready or 0 for c in children
        )
        assert [p.stage_id for p in running] == [0, 1]
        # Omni's parent-death signal would stop a stage once launch's spawning thread is
        # pruned from anyio's pool (idle 10 s, pruned by the next worker-thread call)
        await anyio.sleep(11)
        for _ in range(3):
            await anyio.to_thread.run_sync(lambda: None)
        await anyio.sleep(1)
        clients = [p.make_client(metadata(p.stage_id)) for p in running]
        try:
            assert await generate(clients[0], "a", [5, 6, 7], 3) == [8, 9, 10]
            assert await generate(clients[1], "b", [40], 2) == [41, 42]
        finally:
            for client in clients:
                client.shutdown()
        assert all(str(c.state) == "ready" for c in children)
    assert not any(alive(p.pid) for p in running)


LAUNCH_EXECUTOR = "launch.integrations.vllm.LaunchExecutor"


@pytest.mark.parametrize("backend", ["mp", LAUNCH_EXECUTOR])
async def test_a_stage_failing_in_init_gives_its_traceback_and_stops_the_other(
    model_dir: Path, backend: str
) -> None:
    stages = [
        OmniStageLaunch("thinker", stage_config(model_dir, load_s=30), stage_id=0),
        OmniStageLaunch(
            "talker", stage_config(model_dir, backend=backend, fail_rank=0), stage_id=1
        ),
    ]
    began = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with open_omni_stages(stages, ready_timeout=300):
            pytest.fail("the stages started")
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "talker"
    assert "run_stage_core" in (first.remote_traceback or "")  # the stage's own frames
    if backend == LAUNCH_EXECUTOR:  # its workers are launch's children: their traceback
        assert "weights shard 0 is corrupt" in str(first)
        assert "load_model" in (first.remote_traceback or "")
    else:  # vLLM's workers: the stage's traceback says where the worker's went
        assert "WorkerProc initialization failed" in str(first)
    assert len(info.value.exceptions) == 1  # the thinker was stopped, not failed
    assert time.monotonic() - began < 120  # coarse: not the thinker's 30 s load + handshake
    # the thinker is gone: the no-leaked-process check of every test (conftest) enforces it


async def test_a_stage_dying_before_its_handshake_fails_within_the_deadline(
    model_dir: Path,
) -> None:
    stages = [
        OmniStageLaunch("thinker", stage_config(model_dir), stage_id=0),
        OmniStageLaunch(
            "talker", stage_config(model_dir, "omni_standin.StageKillingWorker"), stage_id=1
        ),
    ]
    began = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with open_omni_stages(stages, ready_timeout=300):
            pytest.fail("the stages started")
    first = info.value.first
    assert first.name == "talker" and first.exitcode == -9
    assert time.monotonic() - began < 150  # well within ready_timeout: not a hang


async def test_a_stage_hanging_in_init_fails_at_its_ready_timeout(model_dir: Path) -> None:
    stages = [OmniStageLaunch("thinker", stage_config(model_dir, load_s=600), stage_id=0)]
    began = time.monotonic()
    with pytest.raises(launch.LaunchFailed) as info:
        async with open_omni_stages(stages, ready_timeout=45):
            pytest.fail("the stage started")
    assert isinstance(info.value.first, launch.ReadyTimeout)
    assert 45 <= time.monotonic() - began < 120  # the deadline, not the 600 s load
