"""vLLM's data-parallel engine cores on GPUs: vLLM's own start against
``launch.integrations.vllm_dp.open_engine_cores``, DP=2 x TP=2 on 4 GPUs.

Per trial (a fresh process each): seconds until an ``AsyncLLM`` has answered a first
request on every engine, the devices each engine process was given
(``CUDA_VISIBLE_DEVICES`` read from /proc), GPU memory in use per GPU, and with
``--fail`` the error and its timing when rank 1 of every engine fails in ``load_model``.

    python tools/vllm_gpu_dp.py --repeats 2 --fail --out dp.json

Needs vllm (see tools/vllm_gpu_startup.py), psutil and nvidia-smi. Not part of the package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vllm_gpu_startup import descendants, gpu_memory_used_mib, make_model  # noqa: E402


def engine_devices() -> dict[str, str | None]:
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            environ = proc.environ()
            title = " ".join(proc.cmdline())[:60]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[f"{proc.pid} {title}"] = environ.get("CUDA_VISIBLE_DEVICES")
    return found


async def trial(mode: str, model: str, fail: bool) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # FlashInfer is not carried
    if fail:
        os.environ["LAUNCH_FAIL_RANK"] = "1"
    config = AsyncEngineArgs(
        model=model,
        skip_tokenizer_init=True,
        data_parallel_size=2,
        tensor_parallel_size=2,
        distributed_executor_backend="launch.integrations.vllm.LaunchExecutor"
        if mode == "launch"
        else "mp",
        enforce_eager=True,
        max_model_len=2048,
        gpu_memory_utilization=0.5,
        attention_backend="FLASH_ATTN",
        worker_cls="vllm_failing_worker.FailingWorker" if fail else "auto",
    ).create_engine_config()
    result: dict[str, Any] = {"mode": mode, "fail": fail}
    params = SamplingParams(max_tokens=1, detokenize=False)

    async def serve(llm: Any) -> None:
        async def one(i: int) -> None:
            async for _ in llm.generate({"prompt_token_ids": [1, 100 + i]}, params, f"r{i}"):
                pass

        await asyncio.gather(*(one(i) for i in range(8)))
        result["ready_s"] = time.monotonic() - began
        result["devices"] = engine_devices()
        result["gpu_mib"] = gpu_memory_used_mib()

    began = time.monotonic()
    try:
        if mode == "launch":
            from launch.integrations.vllm_dp import open_engine_cores

            async with open_engine_cores(config) as cores:
                llm = AsyncLLM.from_vllm_config(config, client_addresses=cores.client_addresses)
                try:
                    await serve(llm)
                finally:
                    llm.shutdown()
        else:
            llm = AsyncLLM.from_vllm_config(config)
            try:
                await serve(llm)
            finally:
                llm.shutdown()
    except BaseException as exc:  # the error is the measurement
        result["error_s"] = time.monotonic() - began
        result["error"] = str(exc)[-1500:]
        result["error_names_cause"] = "weights shard is corrupt" in str(exc)
    time.sleep(0.1)
    result["procs_left"] = len(descendants())
    result["gpu_mib_after"] = gpu_memory_used_mib()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--model", type=Path, default=Path("/tmp/llama-rand"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--trial", choices=["vllm", "launch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        print("RESULT " + json.dumps(asyncio.run(trial(args.trial, str(args.model), args.fail))))
        return 0
    make_model(args.model)
    plan = [False] * args.repeats + ([True] if args.fail else [])
    results = []
    for fail in plan:
        for mode in ("vllm", "launch"):
            command = [sys.executable, __file__, "--trial", mode, "--model", str(args.model)]
            proc = subprocess.run(
                command + (["--fail"] if fail else []), capture_output=True, text=True,
                timeout=240, check=False,
            )  # fmt: skip
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            result = (
                json.loads(lines[-1][7:]) if lines else {"mode": mode, "tail": proc.stderr[-2000:]}
            )
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
