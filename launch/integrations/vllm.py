"""vLLM through launch: tensor-parallel workers started as a launch group.

``LaunchExecutor`` is a ``MultiprocExecutor`` whose workers are launch children:

    LLM(model, tensor_parallel_size=4,
        distributed_executor_backend="launch.integrations.vllm.LaunchExecutor")

or pass the class itself. What changes against vLLM's own ``mp`` backend:

- Every worker is spawned concurrently, outside any lock but launch's narrow one (the
  large ``VllmConfig`` goes over the control socket after the spawn, so no ``start()``
  waits for a worker's imports); READY is raced against the worker's death and a
  deadline (``LAUNCH_VLLM_READY_TIMEOUT``, default 600 s).
- The first worker that fails tears every other one down at once (SIGTERM to a worker
  that is not READY; vLLM waits 5 s, then SIGTERM, then 4 s), and the error raised is
  launch's ``LaunchFailed``, whose text ends with that worker's own traceback.
- Per-rank OpenMP environment (vLLM's CPU backend) is applied inside each worker, not by
  patching the engine process's ``os.environ`` around each spawn.
- A worker dying later marks the executor failed and calls vLLM's failure callback, as
  vLLM's monitor thread does; launch's death watch replaces that thread.

Written against vLLM 0.32 and 0.26 (``vllm.v1.executor.multiproc_executor``); single node,
``nnodes_within_dp == 1``. Workers start the way vLLM's own executor would start them
(``fork`` by default, ``spawn`` once CUDA is up); ``LAUNCH_VLLM_START_METHOD`` overrides it
with ``spawn``, ``fork`` or ``forkserver`` (launch's own; preload with ``launch.prewarm``).
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import sys
import threading
from collections import deque
from contextlib import ExitStack
from typing import Any

from vllm.config import VllmConfig
from vllm.distributed.device_communicators.shm_broadcast import MessageQueue
from vllm.envs import VLLM_MQ_MAX_CHUNK_BYTES_MB
from vllm.utils import network_utils
from vllm.utils.ompmultiprocessing import OMPProcessManager
from vllm.v1.executor.multiproc_executor import (
    MultiprocExecutor,
    WorkerProc,
    WorkerProcHandle,
    set_multiprocessing_worker_envs,
)

from .._blocking import GroupHandle, start_group
from .._child import Child
from .._errors import LaunchFailed
from .._lock import LAUNCH_LOCK
from .._spec import ProcessSpec, ShutdownPolicy

logger = logging.getLogger("launch")

WORKER_TARGET = "launch.integrations.vllm:worker"
SHUTDOWN = ShutdownPolicy(stop_timeout=2.0, term_timeout=2.0, kill_timeout=1.0)


class LaunchedProcess:
    """Stands where vLLM keeps a worker's ``multiprocessing`` process: its name, pid and
    liveness, read from the launch child."""

    def __init__(self, child: Child) -> None:
        self._child = child
        self.name = child.name

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def exitcode(self) -> int | None:
        return self._child.exitcode

    def is_alive(self) -> bool:
        return self._child.exitcode is None and self._child.pid is not None


def _omp_env(manager: OMPProcessManager, rank: int, local_rank: int) -> dict[str, str]:
    """The per-rank OpenMP variables vLLM would set on ``os.environ`` around a spawn,
    read under the launch lock and handed to the child instead."""
    with LAUNCH_LOCK:
        before = dict(os.environ)
        with manager.configure_omp_envs(rank=rank, local_rank=local_rank):
            after = dict(os.environ)
    return {key: value for key, value in after.items() if before.get(key) != value}


def _set_worker_envs(local_world_size: int) -> None:
    if inspect.signature(set_multiprocessing_worker_envs).parameters:  # 0.32 takes a count
        set_multiprocessing_worker_envs(local_world_size)
    else:
        set_multiprocessing_worker_envs()


def _mq_options(parallel_config: Any) -> dict[str, Any]:
    if "enable_shm_tensor_arena" in inspect.signature(MessageQueue).parameters:
        return {"enable_shm_tensor_arena": parallel_config.enable_shm_tensor_arena}
    return {}


def _distributed_init_method() -> str:
    """Where the workers meet for torch.distributed, as the running vLLM chooses it."""
    requires_tcp = getattr(network_utils, "aiter_requires_tcp_store", lambda: True)
    file_store = getattr(network_utils, "get_file_store_init_method", None)
    if file_store is None or requires_tcp():
        return str(
            network_utils.get_distributed_init_method(
                network_utils.get_loopback_ip(), network_utils.get_open_port()
            )
        )
    return str(file_store())


def _start_method() -> str:
    """``LAUNCH_VLLM_START_METHOD``, else what vLLM's own executor would use (``fork``,
    unless CUDA is already up in this process or ``VLLM_WORKER_MULTIPROC_METHOD`` says
    otherwise): a forked worker skips the ~8 s of importing torch and vLLM again."""
    chosen = os.environ.get("LAUNCH_VLLM_START_METHOD")
    if chosen:
        return chosen
    from vllm.utils.system_utils import get_mp_context

    return str(get_mp_context().get_start_method())


def _set_runtime_threads() -> None:
    try:  # vLLM >= 0.3x: the engine process only schedules, so it drops its torch threads
        from vllm.utils.torch_utils import set_torch_threads_for_runtime
    except ImportError:
        return
    set_torch_threads_for_runtime()


class LaunchExecutor(MultiprocExecutor):  # type: ignore[misc]
    """vLLM's multiprocessing executor with its workers started and supervised by launch."""

    def _init_executor(self) -> None:
        self.is_failed = False
        self.failure_callback = None
        self.shutting_down = False
        self._exit = ExitStack()
        tp_size, pp_size, pcp_size = self._get_parallel_sizes()
        if self.world_size != tp_size * pp_size * pcp_size:
            raise ValueError(
                f"world_size ({self.world_size}) must be tensor_parallel_size ({tp_size}) "
                f"x pipeline_parallel_size ({pp_size}) x prefill_context_parallel_size "
                f"({pcp_size})"
            )
        if self.parallel_config.nnodes_within_dp != 1:
            raise NotImplementedError("LaunchExecutor starts the workers of one node")
        _set_worker_envs(self.local_world_size)  # vLLM's own env policy
        self.rpc_broadcast_mq = MessageQueue(
            self.world_size,
            self.local_world_size,
            max_chunk_bytes=VLLM_MQ_MAX_CHUNK_BYTES_MB * 1024 * 1024,
            connect_ip=network_utils.get_ip(),
            **_mq_options(self.parallel_config),
        )
        init_method = _distributed_init_method()
        handle = self.rpc_broadcast_mq.export_handle()
        omp = OMPProcessManager(self.vllm_config)
        method = _start_method()
        timeout = float(os.environ.get("LAUNCH_VLLM_READY_TIMEOUT", "600"))
        specs = [
            ProcessSpec(
                WORKER_TARGET,
                name=f"VllmWorker-{rank}",
                kwargs={
                    "vllm_config": self.vllm_config,
                    "local_rank": rank,
                    "rank": rank,
                    "distributed_init_method": init_method,
                    "input_shm_handle": handle,
                    "is_driver_worker": self._is_driver_worker(rank),
                },
                env=_omp_env(omp, rank, rank),
                start_method=method,  # type: ignore[arg-type]
                ready_timeout=timeout,
            )
            for rank in range(self.local_world_size)
        ]
        try:
            group: GroupHandle = self._exit.enter_context(
                start_group(
                    specs,
                    name="vllm-workers",
                    shutdown=SHUTDOWN,
                    on_child_died=self._on_worker_died,
                )
            )
        except BaseException:
            self.rpc_broadcast_mq.shutdown()
            raise
        self._group = group
        self.workers = [
            WorkerProcHandle(
                proc=LaunchedProcess(child),
                rank=rank,
                worker_response_mq=MessageQueue.create_from_handle(child.payload["handle"], 0),
                peer_worker_response_mqs=[],
                death_writer=None,
            )
            for rank, child in enumerate(group.children)
        ]
        _set_runtime_threads()
        self.response_mqs = [worker.worker_response_mq for worker in self.workers]
        self.rpc_broadcast_mq.wait_until_ready()
        for response_mq in self.response_mqs:
            response_mq.wait_until_ready()
        self.futures_queue: deque[Any] = deque()
        self._post_init_executor()
        self.output_rank = self._get_output_rank()

    def start_worker_monitor(self, inline: bool = False) -> None:
        """launch's death watch is the monitor (``_on_worker_died``): no thread here."""

    def _on_worker_died(self, failure: LaunchFailed) -> None:
        # called in the launch loop's thread, after every sibling was torn down
        if self.shutting_down:
            return
        self.is_failed = True
        logger.error("vLLM worker failed, executor shut down: %s", failure.first)
        callback, self.failure_callback = self.failure_callback, None
        if callback is not None:
            callback()

    def shutdown(self) -> None:
        """Stop every worker through launch (bounded: cooperative stop, SIGTERM, SIGKILL),
        then close the message queues."""
        if self.shutting_down:
            return
        self.shutting_down = True
        try:
            self._exit.close()
        except LaunchFailed:
            pass  # already reported through _on_worker_died
        for mq in [getattr(self, "rpc_broadcast_mq", None), *getattr(self, "response_mqs", [])]:
            if mq is not None:
                mq.shutdown()
        self.rpc_broadcast_mq = None
        self.response_mqs = []


def stop_with_sigterm() -> None:
    """Deliver launch's cooperative stop as the SIGTERM that vLLM's processes handle
    (its bootstrap, or vLLM's own handler, turns it into an orderly exit). A daemon
    thread: the child has no event loop, and the thread must not keep it alive."""
    from .. import wait_for_stop

    def stop_on_request() -> None:
        wait_for_stop()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_on_request, daemon=True, name="launch-stop").start()


def exit_after_stop() -> None:
    """Leave a stopped vLLM process once vLLM's shutdown has run: the interpreter's own
    teardown of torch and gloo adds ~1.5 s per stop (measured on 2 cores) and releases
    nothing an exiting process needs."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker(
    *,
    vllm_config: VllmConfig,
    local_rank: int,
    rank: int,
    distributed_init_method: str,
    input_shm_handle: Any,
    is_driver_worker: bool,
) -> None:
    """Target of one vLLM worker (``WorkerProc``), started by :class:`LaunchExecutor`."""
    from .. import phase, ready

    phase("init_device + load_model")
    proc = WorkerProc(
        vllm_config,
        local_rank,
        rank,
        distributed_init_method,
        input_shm_handle,
        None,  # shared_worker_lock: only the multimodal shm cache uses it
        is_driver_worker,
    )
    ready(
        {
            "handle": proc.worker_response_mq.export_handle(),
            "peer_response_handles": proc.peer_response_handles,
        }
    )

    stop_with_sigterm()
    if proc.rpc_broadcast_mq is not None:
        proc.rpc_broadcast_mq.wait_until_ready()
    proc.worker_response_mq.wait_until_ready()
    try:
        proc.worker_busy_loop()
    except SystemExit:
        proc.shutdown()  # stopped (launch's stop or a SIGTERM): vLLM's own cleanup, then
        exit_after_stop()
    except BaseException:
        proc.shutdown()
        raise
