"""launch.integrations.vllm.open_async_llm and start_llm against the real vllm package
(CPU build, stand-in worker): vLLM's AsyncLLM and an LLM-like generate whose engine core
and workers run in launch's tree. Run with ``nox -s vllm``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import launch

pytestmark = pytest.mark.anyio


def engine_args(model: Path, **standin: Any) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=str(model),
        skip_tokenizer_init=True,
        tensor_parallel_size=2,  # vLLM's mp backend: LaunchExecutor takes its place
        enforce_eager=True,
        max_model_len=128,
        enable_prefix_caching=False,  # the stand-in has no KV cache
        worker_cls="standin_worker.StandInWorker",
        additional_config={"standin": standin},
    )


def assert_the_workers_failure(failure: launch.LaunchFailed) -> None:
    first = failure.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "EngineCore_DP0"
    assert "VllmWorker-1" in str(first)  # the engine's error names the worker
    assert "weights shard 1 is corrupt" in str(first)
    assert "load_model" in (first.remote_traceback or "")  # the worker's own frames


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # vLLM's client is asyncio's
async def test_open_async_llm_generates_with_engines_in_launchs_tree(
    model_dir: Path, anyio_backend: str
) -> None:
    from vllm import SamplingParams

    from launch.integrations.vllm import open_async_llm

    async with open_async_llm(engine_args(model_dir, load_s=0.1)) as llm:
        final: Any = None
        params = SamplingParams(max_tokens=3, detokenize=False)
        async for output in llm.generate({"prompt_token_ids": [5, 6]}, params, "r0"):
            final = output
        assert list(final.outputs[0].token_ids) == [7, 8, 9]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_open_async_llm_raises_the_workers_failure(
    model_dir: Path, anyio_backend: str
) -> None:
    from launch.integrations.vllm import open_async_llm

    with pytest.raises(launch.LaunchFailed) as info:
        async with open_async_llm(engine_args(model_dir, fail_rank=1)):
            pytest.fail("the engine started")
    assert_the_workers_failure(info.value)
    # nothing left: the no-leaked-process check of every test (conftest) enforces it


def test_start_llm_generates_like_vllms_llm(model_dir: Path) -> None:
    from vllm import SamplingParams

    from launch.integrations.vllm import start_llm

    with start_llm(engine_args(model_dir, load_s=0.1)) as llm:
        outputs = llm.generate(
            [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [40]}],
            SamplingParams(max_tokens=3, detokenize=False),
        )
        assert [list(o.outputs[0].token_ids) for o in outputs] == [[8, 9, 10], [41, 42, 43]]
        pids = [child.pid for child in llm.engines.group.children]
    assert all(child.exitcode is not None for child in llm.engines.group.children), pids


def test_start_llm_raises_the_workers_failure(model_dir: Path) -> None:
    from launch.integrations.vllm import start_llm

    with (
        pytest.raises(launch.LaunchFailed) as info,
        start_llm(engine_args(model_dir, fail_rank=1)),
    ):
        pytest.fail("the engine started")
    assert_the_workers_failure(info.value)
