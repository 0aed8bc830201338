"""launch.integrations.vllm.LaunchExecutor against the real vllm package (CPU build):
vLLM's own worker processes, message queues and RPC path, with a stand-in worker_cls
(the CPU wheel has no kernels to run a model). Run with ``nox -s vllm``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from procs import alive

import launch


def engine_config(model: Path, **standin: Any) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(
        model=str(model),
        skip_tokenizer_init=True,
        tensor_parallel_size=2,
        enforce_eager=True,
        max_model_len=128,
        worker_cls="standin_worker.StandInWorker",
        additional_config={"standin": standin},
    ).create_engine_config()


def test_workers_start_through_launch_and_serve_vllm_rpcs(model_dir: Path) -> None:
    from launch.integrations.vllm import LaunchExecutor

    executor = LaunchExecutor(engine_config(model_dir, load_s=0.2))
    try:
        answers = executor.collective_rpc("ping")
        assert [a["rank"] for a in answers] == [0, 1]
        pids = [a["pid"] for a in answers]
        assert len(set(pids)) == 2 and all(alive(pid) for pid in pids)
        assert [w.proc.pid for w in executor.workers] == pids
        assert not executor.is_failed
    finally:
        executor.shutdown()
    assert not any(alive(pid) for pid in pids)


def test_a_worker_failing_in_init_gives_its_own_traceback_and_leaves_nothing(
    model_dir: Path,
) -> None:
    from launch.integrations.vllm import LaunchExecutor

    config = engine_config(model_dir, fail_rank=1)
    with pytest.raises(launch.LaunchFailed) as info:
        LaunchExecutor(config)
    first = info.value.first
    assert isinstance(first, launch.ChildCrashed) and first.name == "VllmWorker-1"
    assert "weights shard 1 is corrupt" in str(first)
    assert "load_model" in (first.remote_traceback or "")  # the worker's own frames
    # nothing left: the no-leaked-process check of every test (conftest) enforces it


def test_vllms_own_executor_on_the_same_failure_says_see_above(model_dir: Path) -> None:
    """The comparison: vLLM's mp executor raises a generic error (the cause is only in
    the worker's log) and waits out its 5 s grace period before SIGTERM."""
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    config = engine_config(model_dir, fail_rank=1)
    began = time.monotonic()
    with pytest.raises(Exception, match="See stack trace for root cause") as info:
        MultiprocExecutor(config)
    assert "weights shard" not in str(info.value)
    assert time.monotonic() - began >= 5.0
    # vLLM SIGKILLs a worker that outlived SIGTERM + 4 s without waiting for it: give a
    # straggler a moment to go before this test's leak check looks
    import psutil

    def worker(proc: psutil.Process) -> bool:
        try:
            return "resource_tracker" not in " ".join(proc.cmdline())
        except psutil.Error:  # a zombie, or already gone
            return True

    psutil.wait_procs([p for p in psutil.Process().children(recursive=True) if worker(p)], 10)


def test_llm_starts_end_to_end_through_launch_and_generates(model_dir: Path) -> None:
    """vLLM's whole path: LLM -> engine-core process -> ZMQ handshake -> launch's
    executor -> worker processes; the stand-in samples last token + 1."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model_dir),
        skip_tokenizer_init=True,
        tensor_parallel_size=2,
        distributed_executor_backend="launch.integrations.vllm.LaunchExecutor",
        enforce_eager=True,
        max_model_len=128,
        enable_prefix_caching=False,  # the stand-in has no KV cache
        worker_cls="standin_worker.StandInWorker",
        additional_config={"standin": {"load_s": 0.1}},
    )
    try:
        outputs = llm.generate(
            [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [40]}],
            SamplingParams(max_tokens=3, detokenize=False),
        )
        assert [list(o.outputs[0].token_ids) for o in outputs] == [[8, 9, 10], [41, 42, 43]]
    finally:
        llm.llm_engine.engine_core.shutdown()


def test_workers_start_the_way_vllms_own_executor_would(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.utils.system_utils import get_mp_context

    from launch.integrations.vllm import _start_method

    monkeypatch.delenv("LAUNCH_VLLM_START_METHOD", raising=False)
    assert _start_method() == get_mp_context().get_start_method()
    monkeypatch.setenv("LAUNCH_VLLM_START_METHOD", "forkserver")
    assert _start_method() == "forkserver"
