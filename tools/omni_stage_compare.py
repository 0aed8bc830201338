"""vLLM-Omni's own LLM-stage launch against launch's (open_omni_stages), on this machine:
time from the first spawn to every stage READY, and a stage failing during init (time to
the error reaching the caller, what it says, which processes are left at that moment).

Omni's path is ``AsyncOmniEngine._initialize_stage_replicas`` / ``_initialize_llm_replica``
(vLLM-Omni 0.22.0) reduced to what starts processes: one thread per replica; under one
lock each sets the parent's ``CUDA_VISIBLE_DEVICES`` and calls ``spawn_stage_core``, then
``complete_stage_handshake`` outside it; the first failure cancels the futures not yet
running and the caller waits for the others (``as_completed``), then shuts the started
stages down (``_shutdown_initialized_clients``). Omni's fcntl device locks are left out
(every stage has its own device here, so they never wait). Stage configs are built
before the clock starts, for both.

Every stage is Omni's ``StageEngineCoreProc`` with vLLM's ``mp`` executor and the stand-in
worker (tests/vllm/standin_worker.py): no model runs. Rounds alternate the two paths.

``--engine``: the whole engine instead, Omni's ``AsyncOmniEngine`` against
``LaunchAsyncOmniEngine`` on the same chain of ``--stages`` LLM stages (a legacy
``stage_args`` file): time from the constructor's call until it returns (config reading,
plans, stages, clients, orchestrator), then a stage failing in init (time to the
constructor's error, what it is, which processes are left when it is raised).

    PYTHONPATH=tests/vllm:tests/vllm/omni_cpu_platform VLLM_TARGET_DEVICE=cpu \\
      VLLM_CPU_OMP_THREADS_BIND=nobind /tmp/omni-venv-22/bin/python \\
      tools/omni_stage_compare.py --stages 3 --rounds 3 --fail-rounds 2 \\
      --out docs/development/bench-raw/omni-stage-compare.json
    ... tools/omni_stage_compare.py --engine --stages 3 --rounds 4 --fail-rounds 2 \\
      --out docs/development/bench-raw/omni-engine-compare.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import psutil

import launch
from launch.integrations.omni import OmniStageLaunch, open_omni_stages

DEVICE_ENV = "CUDA_VISIBLE_DEVICES"


def stage_config(model: Path, **standin: Any) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(
        model=str(model),
        distributed_executor_backend="mp",
        skip_tokenizer_init=True,
        enforce_eager=True,
        max_model_len=128,
        enable_prefix_caching=False,
        worker_cls="standin_worker.StandInWorker",
        additional_config={"standin": standin},
    ).create_engine_config()


def descendants() -> list[str]:
    """This process's live descendants (multiprocessing's resource tracker left out)."""
    left = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "resource_tracker" not in cmd:
            left.append(f"{proc.pid} {proc.name()}")
    return left


def wait_no_descendants(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while descendants() and time.monotonic() < deadline:
        time.sleep(0.2)


# -- Omni's own path -------------------------------------------------------------------


def omni_start(configs: list[Any], stamp: Path | None = None) -> dict[str, Any]:
    from vllm.v1.executor import Executor
    from vllm.v1.utils import shutdown
    from vllm_omni.engine.stage_engine_core_proc import (
        complete_stage_handshake,
        spawn_stage_core,
    )

    launch_lock = threading.Lock()
    procs: list[Any] = []

    def replica(index: int, config: Any) -> Any:
        proc = None
        with launch_lock:  # _initialize_llm_replica: the parent's device variable, spawned
            previous = os.environ.get(DEVICE_ENV)
            os.environ[DEVICE_ENV] = str(index)
            try:
                addresses, proc, handshake = spawn_stage_core(
                    config, Executor.get_class(config), False
                )
                procs.append(proc)
            finally:
                if previous is None:
                    del os.environ[DEVICE_ENV]
                else:
                    os.environ[DEVICE_ENV] = previous
        complete_stage_handshake(proc, handshake, addresses, config, 600)
        return proc

    began = time.monotonic()
    started: list[Any] = []
    primary: Exception | None = None
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(configs)) as pool:
        futures = [pool.submit(replica, i, c) for i, c in enumerate(configs)]
        for future in concurrent.futures.as_completed(futures):
            try:
                started.append(future.result())
            except concurrent.futures.CancelledError:
                continue
            except Exception as exc:  # as Omni: cancel what has not run, wait for the rest
                if primary is None:
                    primary = exc
                    for other in futures:
                        other.cancel()
    raised_s = time.monotonic() - began
    result: dict[str, Any] = {"path": "omni", "load_avg_1m": os.getloadavg()[0]}
    if primary is None:
        result["all_ready_s"] = raised_s
    else:
        result["error_s"] = raised_s
        result.update(failure_to_error(began, raised_s, stamp))
        result["error"] = f"{type(primary).__name__}: {primary}"
        result["left_at_error"] = descendants()
    shutdown(started)  # the caller's cleanup of the initialized stages
    result["cleaned_s"] = time.monotonic() - began
    shutdown(procs)
    return result


# -- launch's path ---------------------------------------------------------------------


async def launch_start(configs: list[Any], stamp: Path | None = None) -> dict[str, Any]:
    stages = [
        OmniStageLaunch(f"stage-{i}", config, stage_id=i, devices=[i])
        for i, config in enumerate(configs)
    ]
    result: dict[str, Any] = {"path": "launch", "load_avg_1m": os.getloadavg()[0]}
    lock_dir = tempfile.mkdtemp(prefix="omni-compare-locks-")  # no other run's locks
    began = time.monotonic()
    try:
        async with open_omni_stages(stages, ready_timeout=600, lock_dir=lock_dir) as running:
            result["all_ready_s"] = time.monotonic() - began
            result["ready_s"] = {
                p.name: (running.pipeline[p.name][p.name].times.ready or 0.0) - began
                for p in running
            }
    except launch.LaunchFailed as exc:
        result["error_s"] = time.monotonic() - began
        result.update(failure_to_error(began, result["error_s"], stamp))
        first = exc.first
        result["error"] = str(first)[-1500:]
        result["error_summary"] = first.summary()
        result["left_at_error"] = descendants()
        result["cleaned_s"] = result["error_s"]  # raised once every stage was reaped
        return result
    result["cleaned_s"] = time.monotonic() - began
    return result


# -- the whole engine: Omni's AsyncOmniEngine against LaunchAsyncOmniEngine -----------------


def engine_config(path: Path, model: Path, loads: list[dict[str, Any]]) -> Path:
    """A chain of LLM stages (each one's output is the next one's prompt)."""
    stages = []
    for i, standin in enumerate(loads):
        stage: dict[str, Any] = {
            "stage_id": i,
            "engine_args": {
                "distributed_executor_backend": "mp",
                "skip_tokenizer_init": True,
                "enforce_eager": True,
                "max_model_len": 128,
                "enable_prefix_caching": False,
                "worker_cls": "standin_worker.StandInWorker",
                "additional_config": {"standin": standin},
            },
            "final_output": i == len(loads) - 1,
        }
        if i:
            stage["engine_input_source"] = [i - 1]
        if i == len(loads) - 1:
            stage["final_output_type"] = "text"
        stages.append(stage)
    path.write_text(json.dumps({"stage_args": stages}))  # JSON is YAML
    return path


def engine_start(path: str, model: Path, config: Path, stamp: Path | None = None) -> dict[str, Any]:
    if path == "omni":
        from vllm_omni.engine.async_omni_engine import AsyncOmniEngine as Engine
    else:
        from launch.integrations.omni import LaunchAsyncOmniEngine as Engine
    result: dict[str, Any] = {"path": path, "load_avg_1m": os.getloadavg()[0]}
    began = time.monotonic()
    try:
        engine = Engine(str(model), stage_configs_path=str(config), stage_init_timeout=600)
    except Exception as exc:
        result["error_s"] = time.monotonic() - began
        result.update(failure_to_error(began, result["error_s"], stamp))
        result["left_at_error"] = descendants()
        result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        chain, cause = [], exc.__cause__
        while cause is not None:
            chain.append(type(cause).__name__)
            cause = cause.__cause__
        result["cause_chain"] = chain
        first = getattr(exc.__cause__, "first", None)
        if first is not None:
            result["first_failure"] = first.summary()
            result["stage_traceback_reachable"] = bool(getattr(first, "remote_traceback", None))
        wait_no_descendants()
        result["cleaned_s"] = time.monotonic() - began
        return result
    result["constructed_s"] = time.monotonic() - began
    engine.shutdown()
    result["shutdown_s"] = time.monotonic() - began - result["constructed_s"]
    return result


def engine_main(args: argparse.Namespace, model: Path) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="omni-engine-compare-"))
    for r in range(args.rounds):
        order = ["omni", "launch"] if r % 2 == 0 else ["launch", "omni"]
        for path in order:
            config = engine_config(
                work / "start.json", model, [{"load_s": args.load_s}] * args.stages
            )
            wait_no_descendants()
            result = engine_start(path, model, config)
            result.update(round=r, scenario="start")
            print(json.dumps(result), flush=True)
            rounds.append(result)
    for r in range(args.fail_rounds):
        order = ["omni", "launch"] if r % 2 == 0 else ["launch", "omni"]
        for path in order:
            stamp = work / "failed-at"
            loads = [{"load_s": args.slow_load_s}] * (args.stages - 1)
            config = engine_config(
                work / "fail.json", model, [*loads, {"fail_rank": 0, "stamp": str(stamp)}]
            )
            wait_no_descendants()
            result = engine_start(path, model, config, stamp)
            result.update(round=r, scenario="fail")
            print(json.dumps(result), flush=True)
            rounds.append(result)
    wait_no_descendants()
    return rounds


def failure_to_error(began: float, error_s: float, stamp: Path | None) -> dict[str, float]:
    """When the stand-in worker failed (its stamp, on the same monotonic clock), and how
    long after that the error reached the caller."""
    if stamp is None or not stamp.exists():
        return {}
    failed_s = float(stamp.read_text()) - began
    stamp.unlink()
    return {"failed_s": failed_s, "failure_to_error_s": error_s - failed_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fail-rounds", type=int, default=2)
    parser.add_argument("--load-s", type=float, default=0.5, help="each stand-in's load")
    parser.add_argument("--slow-load-s", type=float, default=20.0, help="the others' load")
    parser.add_argument("--engine", action="store_true", help="the whole engine (see above)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from standin_worker import tiny_llama
    from vllm.platforms import current_platform

    assert current_platform.is_cpu(), "put tests/vllm/omni_cpu_platform on PYTHONPATH"
    model = tiny_llama(Path(tempfile.mkdtemp(prefix="omni-compare-")) / "tiny")
    if args.engine:
        return engine_report(args, engine_main(args, model))
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = ["omni", "launch"] if r % 2 == 0 else ["launch", "omni"]
        for path in order:
            configs = [stage_config(model, load_s=args.load_s) for _ in range(args.stages)]
            wait_no_descendants()
            result = omni_start(configs) if path == "omni" else anyio.run(launch_start, configs)
            result.update(round=r, scenario="start")
            print(json.dumps(result), flush=True)
            rounds.append(result)
    for r in range(args.fail_rounds):
        order = ["omni", "launch"] if r % 2 == 0 else ["launch", "omni"]
        for path in order:
            stamp = model.parent / "failed-at"
            configs = [
                stage_config(model, load_s=args.slow_load_s) for _ in range(args.stages - 1)
            ] + [stage_config(model, fail_rank=0, stamp=str(stamp))]
            wait_no_descendants()
            if path == "omni":
                result = omni_start(configs, stamp)
            else:
                result = anyio.run(launch_start, configs, stamp)
            result.update(round=r, scenario="fail")
            print(json.dumps(result), flush=True)
            rounds.append(result)
    wait_no_descendants()
    write_report(
        args,
        "Omni LLM stages (StageEngineCoreProc, stand-in worker, no model): "
        "Omni's own launch vs launch.integrations.omni.open_omni_stages",
        rounds,
        [("start", "all_ready_s"), ("fail", "error_s"), ("fail", "failure_to_error_s"),
         ("fail", "cleaned_s")],
    )  # fmt: skip


def engine_report(args: argparse.Namespace, rounds: list[dict[str, Any]]) -> None:
    write_report(
        args,
        "The whole engine, constructor call to return: vLLM-Omni's AsyncOmniEngine vs "
        "launch.integrations.omni.LaunchAsyncOmniEngine (StageEngineCoreProc stages, "
        "stand-in worker, no model)",
        rounds,
        [("start", "constructed_s"), ("start", "shutdown_s"), ("fail", "error_s"),
         ("fail", "failure_to_error_s"), ("fail", "cleaned_s")],
    )  # fmt: skip


def write_report(
    args: argparse.Namespace, what: str, rounds: list[dict[str, Any]], keys: list[tuple[str, str]]
) -> None:
    """Print the medians of ``keys`` (scenario, figure) for both paths; write every round
    and them to ``--out``."""

    def median(path: str, scenario: str, key: str) -> float | None:
        values = [x[key] for x in rounds if x["path"] == path and x["scenario"] == scenario
                  and key in x]  # fmt: skip
        return statistics.median(values) if values else None

    summary = {
        f"{path}_{scenario}_{key}_median": median(path, scenario, key)
        for path in ("omni", "launch")
        for scenario, key in keys
    }
    report = {
        "what": what,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": _versions(),
        "stages": args.stages,
        "load_s": args.load_s,
        "slow_load_s": args.slow_load_s,
        "summary": summary,
        "rounds": rounds,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("vllm", "vllm-omni", "torch", "launch-tree")}


if __name__ == "__main__":
    main()
